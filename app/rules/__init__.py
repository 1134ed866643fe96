"""Routing rules: routes.yaml -> RuleSet -> Decision."""

from app.rules.compile import compile_rules, load_rules
from app.rules.errors import ConfigIssue, RulesError
from app.rules.ruleset import Accept, Action, Decision, Refer, Reject, RuleSet

__all__ = [
    "Accept",
    "Action",
    "ConfigIssue",
    "Decision",
    "Refer",
    "Reject",
    "RuleSet",
    "RulesError",
    "compile_rules",
    "load_rules",
]
