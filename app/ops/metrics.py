"""Prometheus metrics. Labels are bounded sets (never phone numbers); each app has its own
registry so that several apps (tests) can live in one process."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, Self, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.intake.events import APIS, Api
from app.openai.callcontrol import OPERATIONS, STATUS_LABELS, Observer
from app.records.calllog import DROP_REASONS, CallLog, ReportsBacklog
from app.rules import RuleSet

# `*_created` series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

WEBHOOK_RESULTS = (
    "routed",  # acted on (or the caller was gone); answered 200
    "duplicate",  # an earlier delivery's answer replayed
    "ignored",  # a verified event of another type
    "retry",  # answered 5xx so that OpenAI redelivers
    "not_ready",  # no rules loaded yet
    "unauthorized",  # missing or bad signature
    "malformed",  # bad JSON or no call_id
    "too_large",
)
ADMIN_REFUSALS = (
    "disabled",  # no SWITCHBOARD_ADMIN_TOKEN: the admin API is off (403)
    "missing_token",  # no bearer token (401)
    "invalid_token",  # a wrong token (401)
)
RELOAD_RESULTS = (
    "success",  # new rules swapped in
    "failure",  # invalid or unreadable: the previous rules keep serving
    "unchanged",  # same content hash: nothing to do
)
OUTCOMES = (
    "accepted",
    "rejected",
    "referred",
    "caller_gone",
    "failed",
    "upstream_error",
    "refer_failed",
    "dry_run",
    "fallback_accepted",
    "fallback_rejected",
    "fallback_referred",
    "transferring",  # accepted; the transfer follows an announcement over the sideband
    "fallback_transferring",
)
TRANSFER_OUTCOMES = (
    "referred",  # the REFER was accepted
    "failed",  # the API refused it or could not be reached
    "caller_gone",  # the call had ended
    "rejected_destination",  # not on the call's allowlist: nothing was sent
)
HANGUP_REASONS = (
    "end_call",  # the model called its end_call tool
    "max_duration",  # the route's time limit
    "dtmf",  # a key the route maps to hang up
    "operator",  # POST /admin/calls/{call_id}/hangup
    "refer_failed",  # a transfer failed and the call was hung up
)
INCOMING_HANDLING = (
    "handled",  # this event's API answers the call (or rejects it)
    "other_api",  # the other API's event handles the call: acknowledged without acting
    "undecided",  # the handler could not be known yet: answered 503 for a redelivery
)
SIDEBAND_STAGES = (
    "connect",  # the sideband WebSocket could not be opened
    "dropped",  # it closed before the call ended
)
LIVE_CALL_EVENTS = (
    "taken_over",  # this replica took over a call whose owner's lease ran out
    "lost",  # another replica took over a call this one held (its lease ran out)
    "fenced",  # left because this replica could not renew its lease in time
    "handed_over",  # left at shutdown for another replica to take over
    "registry_error",  # the live-call registry (Redis) failed or timed out
)
# Calls last seconds to an hour; longer ones are counted in +Inf.
CALL_DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 2700.0, 3600.0)


class _Labelled(Protocol):
    def labels(self, *values: str) -> Self: ...


M = TypeVar("M", bound=_Labelled)


class Children(Generic[M]):
    """A labelled metric's children by label values, each looked up in prometheus_client
    once: its labels() checks, converts and locks on every call, several times per webhook.
    The label values are bounded sets (the module's rule), so is this."""

    __slots__ = ("_found", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._found: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._found.get(values)
        if child is None:
            child = self._found[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "switchboard_webhooks", "Webhook deliveries by result.", ["result"], registry=r
        )
        self.admin_refused = Counter(
            "switchboard_admin_refused",
            "Admin API requests refused, by reason (their log lines are rate-limited).",
            ["reason"],
            registry=r,
        )
        self.decisions = Counter(
            "switchboard_decisions",
            "Routing decisions by route and action.",
            ["route", "action"],
            registry=r,
        )
        self.outcomes = Counter(
            "switchboard_call_outcomes",
            "Calls by API, action and outcome.",
            ["api", "action", "outcome"],
            registry=r,
        )
        self.upstream = Counter(
            "switchboard_upstream_requests",
            "Call-control API requests by API, operation and status.",
            ["api", "operation", "status"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "switchboard_upstream_latency_seconds",
            "Call-control API request latency.",
            ["api", "operation"],
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.decision_latency = Histogram(
            "switchboard_decision_latency_seconds",
            "SIP parsing plus rule matching time.",
            registry=r,
            buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2),
        )
        self.duplicates = Counter(
            "switchboard_duplicates_suppressed",
            "Deliveries answered without acting again.",
            registry=r,
        )
        self.ignored = Counter(
            "switchboard_ignored_events", "Verified events of other types.", ["type"], registry=r
        )
        self.split_arms = Counter(
            "switchboard_split_arms",
            "Calls per arm of a split route.",
            ["route", "arm"],
            registry=r,
        )
        self.rate_limited = Counter(
            "switchboard_rate_limited",
            "Calls over a route's per-caller limit.",
            ["route"],
            registry=r,
        )
        self.incoming = Counter(
            "switchboard_incoming_calls",
            "Incoming-call events by API, and whether they handled the call or left it to "
            "the other API's event.",
            ["api", "handling"],
            registry=r,
        )
        self.rules_loaded = Gauge(
            "switchboard_rules_loaded_timestamp_seconds",
            "When the active rules were loaded.",
            registry=r,
        )
        self.rules_reloads = Counter(
            "switchboard_rules_reloads", "Rule reloads by result.", ["result"], registry=r
        )
        self.rules_reload_ok = Gauge(
            "switchboard_rules_last_reload_ok",
            "0 while the last reload failed and the previous rules still serve, else 1.",
            registry=r,
        )
        self.dry_run = Gauge(
            "switchboard_dry_run", "1 when no API key is set and nothing is called.", registry=r
        )
        self.active_calls = Gauge(
            "switchboard_active_calls",
            "Calls in progress with a sideband (status active).",
            registry=r,
        )
        self.call_duration = Histogram(
            "switchboard_call_duration_seconds",
            "Duration of the calls that ended, from the webhook to the end.",
            registry=r,
            buckets=CALL_DURATION_BUCKETS,
        )
        self.transfers = Counter(
            "switchboard_transfers", "In-call transfers by outcome.", ["outcome"], registry=r
        )
        self.hangups = Counter(
            "switchboard_hangups", "Hang-ups by Switchboard, by reason.", ["reason"], registry=r
        )
        self.sideband_failures = Counter(
            "switchboard_sideband_failures",
            "Sideband connections that failed, by stage.",
            ["stage"],
            registry=r,
        )
        self.live_calls = Counter(
            "switchboard_live_calls",
            "Live calls changing hands between replicas, and registry failures.",
            ["event"],
            registry=r,
        )
        # The children a webhook counts in, for the per-call code.
        self.webhook_result = Children(self.webhooks)
        self.decision = Children(self.decisions)
        self.outcome = Children(self.outcomes)
        self.split_arm = Children(self.split_arms)
        self.incoming_call = Children(self.incoming)
        self._upstream_request = Children(self.upstream)
        self._upstream_latency = Children(self.upstream_latency)
        for event in LIVE_CALL_EVENTS:
            self.live_calls.labels(event)
        for outcome in TRANSFER_OUTCOMES:
            self.transfers.labels(outcome)
        for reason in HANGUP_REASONS:
            self.hangups.labels(reason)
        for api in APIS:
            for handling in INCOMING_HANDLING:
                self.incoming.labels(api, handling)
        for stage in SIDEBAND_STAGES:
            self.sideband_failures.labels(stage)
        for result in WEBHOOK_RESULTS:
            self.webhooks.labels(result)
        for result in RELOAD_RESULTS:
            self.rules_reloads.labels(result)
        for reason in ADMIN_REFUSALS:
            self.admin_refused.labels(reason)
        self.rules_reload_ok.set(1)
        for api in APIS:
            for operation in OPERATIONS:
                self.upstream_latency.labels(api, operation)
                for status in STATUS_LABELS:
                    self.upstream.labels(api, operation, status)
            for action in ("accept", "reject", "refer"):
                for outcome in OUTCOMES:
                    self.outcomes.labels(api, action, outcome)

    def routes_loaded(self, rules: RuleSet) -> None:
        for name, action in rules.route_actions():
            self.decisions.labels(name, action)
        for name, arm in rules.split_arms():
            self.split_arms.labels(name, arm)
        for route in rules.routes:
            if route.rate_limit is not None:
                self.rate_limited.labels(route.name)
        self.rules_loaded.set(rules.loaded_at)

    def observe_upstream(self, api: Api, operation: str, status: str, seconds: float) -> None:
        self._upstream_request(api, operation, status).inc()
        self._upstream_latency(api, operation).observe(seconds)

    def upstream_observer(self, api: Api) -> Observer:
        """The observer of one API's call control (its requests labelled with the API)."""
        return lambda operation, status, seconds: self.observe_upstream(
            api, operation, status, seconds
        )

    def ignored_event(self, event_type: str) -> None:
        # Event types come from a signed payload, but keep the label set bounded anyway.
        family = event_type.split(".", 1)[0] if "." in event_type else "other"
        self.ignored.labels(family if family in ("realtime", "live", "response") else "other").inc()

    def watch_call_log(self, call_log: CallLog) -> None:
        """The call log's backlog, read at each scrape (it lives in the records layer,
        which knows nothing of metrics)."""
        self.registry.register(_CallLogCollector(call_log))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _CallLogCollector(Collector):
    """switchboard_call_records_*: zeros (and up) for a call log with no backlog to report
    (SQLite and memory write locally)."""

    def __init__(self, call_log: CallLog) -> None:
        self._call_log = call_log

    def collect(self) -> Iterable[Metric]:
        backlog = self._call_log.backlog() if isinstance(self._call_log, ReportsBacklog) else None
        dropped = CounterMetricFamily(
            "switchboard_call_records_dropped",
            "Call-log writes lost, by reason (queue_full: the database was away too long).",
            labels=["reason"],
        )
        for reason in DROP_REASONS:
            dropped.add_metric([reason], backlog.dropped.get(reason, 0) if backlog else 0)
        yield dropped
        yield GaugeMetricFamily(
            "switchboard_call_records_queued",
            "Call-log writes waiting in memory for the database.",
            value=backlog.queued if backlog else 0,
        )
        yield GaugeMetricFamily(
            "switchboard_call_records_database_up",
            "0 while the call records database cannot be reached, else 1.",
            value=1 if backlog is None or backlog.available else 0,
        )
