"""Routing rules: routes.yaml -> RuleSet -> Decision."""

from app.rules.compile import compile_rules, load_rules
from app.rules.errors import ConfigIssue, RulesError
from app.rules.ruleset import (
    Accept,
    Action,
    Decision,
    RateLimit,
    Refer,
    Reject,
    Route,
    RuleSet,
    Split,
    caller_key,
)

__all__ = [
    "Accept",
    "Action",
    "ConfigIssue",
    "Decision",
    "RateLimit",
    "Refer",
    "Reject",
    "Route",
    "RuleSet",
    "RulesError",
    "Split",
    "caller_key",
    "compile_rules",
    "load_rules",
]
