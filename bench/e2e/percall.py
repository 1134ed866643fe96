"""Router-added latency per call, from the generator's and the stand-in API's timestamps.

The open-loop generator records, for each webhook it sends: when it was due, when its
bytes were written to the socket and when the answer's last byte was read. The stand-in
API records, for each call-control request: when its bytes arrived and when it wrote its
answer. Every timestamp is `time.monotonic_ns()` (CLOCK_MONOTONIC: one clock for every
process on the host), so the two processes' records subtract directly. Paired by call
id (each delivery is a call of its own), each call gives:

- late: sent - due, the generator's own scheduling noise (in the old "from due" figures);
- before: webhook sent -> first API request arrived (what a caller on a ringing phone
  waits for: the router's time before the accept leaves);
- after: last API answer written -> webhook answer read;
- api: the stand-in's own time for the call (answer written - request arrived, summed
  over its requests);
- added: (read - sent) - api, the router-added latency. With one request per call (every
  call of the benchmark's workload) it is exactly before + after.

Every interval between two processes also holds a loopback hop and the wake-up of the
process that reads it (the generator and the stand-in share the load core): the same
pairing on the generator sent straight at the stand-in ("stand-in alone") shows that
share, one hop each way.

A webhook answered 2xx without a request of its call at the stand-in, or a request for a
call the generator never sent, is an error: nothing is dropped silently. The one
exception is named by the caller: calls of an earlier phase (`earlier`), whose requests
can still arrive after it ended (wrk stops with deliveries in flight, and the service
still acts on them); they are left out and counted (`leftovers`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

_BODY_CALL_ID = re.compile(rb'"call_id"\s*:\s*"([^"]+)"')
_PATH = re.compile(rb"^[A-Z]+ (\S+) HTTP/1\.[01]\r\n")


class RecordError(ValueError):
    """The generator's and the stand-in's records do not pair one to one."""


def call_id_of(request: bytes) -> str:
    """The call a raw request is about: a webhook's `data.call_id`, or for a request
    straight at the stand-in the id in its path (`/v1/realtime/calls/<id>/<operation>`)."""
    found = _BODY_CALL_ID.search(request)
    if found is not None:
        return found[1].decode()
    line = _PATH.match(request)
    if line is not None:
        call_id = api_call_id(line[1])
        if call_id is not None:
            return call_id
    raise RecordError(f"no call id in request {request[:80]!r}")


def api_call_id(path: bytes) -> str | None:
    """`/v1/realtime/calls/<id>/<operation>` or `/v1/live/sessions/<id>/<operation>`."""
    parts = path.split(b"/")
    if len(parts) < 4 or not parts[-2]:
        return None
    return parts[-2].decode()


@dataclass(frozen=True)
class Sent:
    """One webhook as the generator saw it (ns, time.monotonic_ns)."""

    call_id: str
    due_ns: int
    sent_ns: int
    read_ns: int
    """0: no answer (a socket error or timeout)."""
    status: int
    """0: no answer."""

    @property
    def answered(self) -> bool:
        return 200 <= self.status < 300 and self.read_ns > 0


@dataclass(frozen=True)
class Served:
    """One call-control request as the stand-in saw it (ns, time.monotonic_ns)."""

    call_id: str
    operation: str
    arrived_ns: int
    written_ns: int


@dataclass(frozen=True)
class CallTimes:
    call_id: str
    late_ns: int
    before_ns: int
    after_ns: int
    api_ns: int
    added_ns: int
    requests: int
    """Call-control requests made for the call (1 in the benchmark's workload)."""


def sent_records(data: Mapping[str, Sequence[object]]) -> list[Sent]:
    """The generator's `--records` file (columns of equal length) as records."""
    columns = ("call_id", "due_ns", "sent_ns", "read_ns", "status")
    _same_lengths(data, columns)
    return [
        Sent(str(c), int(d), int(s), int(r), int(st))
        for c, d, s, r, st in zip(*(data[k] for k in columns), strict=True)
    ]


def served_records(data: Mapping[str, Sequence[object]]) -> list[Served]:
    """The stand-in's `GET /_timings` (columns of equal length) as records."""
    columns = ("call_id", "operation", "arrived_ns", "written_ns")
    _same_lengths(data, columns)
    return [
        Served(str(c), str(o), int(a), int(w))
        for c, o, a, w in zip(*(data[k] for k in columns), strict=True)
    ]


def _same_lengths(data: Mapping[str, Sequence[object]], columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in data]
    if missing:
        raise RecordError(f"records lack {missing}")
    lengths = {c: len(data[c]) for c in columns}
    if len(set(lengths.values())) > 1:
        raise RecordError(f"record columns of different lengths: {lengths}")


def pair(
    sent: Iterable[Sent], served: Iterable[Served], earlier: Collection[str] = ()
) -> list[CallTimes]:
    """Each answered webhook with the stand-in's requests of its call, in sending order.

    Webhooks not answered 2xx are left out (the run counts them as failed), with whatever
    requests they made, and so are requests for the `earlier` phases' calls (see
    `leftovers`). Raises RecordError when a webhook answered 2xx has no request at the
    stand-in, a request names a call neither sent by the generator nor earlier, or a call
    id was sent twice."""
    by_call: dict[str, list[Served]] = {}
    for record in served:
        by_call.setdefault(record.call_id, []).append(record)
    sent = list(sent)
    seen: set[str] = set()
    out = []
    missing = []
    for webhook in sent:
        if webhook.call_id in seen:
            raise RecordError(f"call id {webhook.call_id} sent twice")
        seen.add(webhook.call_id)
        if not webhook.answered:
            continue
        requests = by_call.get(webhook.call_id)
        if not requests:
            missing.append(webhook.call_id)
            continue
        first = min(r.arrived_ns for r in requests)
        last = max(r.written_ns for r in requests)
        api = sum(r.written_ns - r.arrived_ns for r in requests)
        out.append(
            CallTimes(
                call_id=webhook.call_id,
                late_ns=webhook.sent_ns - webhook.due_ns,
                before_ns=first - webhook.sent_ns,
                after_ns=webhook.read_ns - last,
                api_ns=api,
                added_ns=webhook.read_ns - webhook.sent_ns - api,
                requests=len(requests),
            )
        )
    if missing:
        raise RecordError(
            f"{len(missing)} webhook(s) answered 2xx without a request at the stand-in API, "
            f"e.g. {missing[:3]}"
        )
    strangers = sorted(set(by_call) - seen - set(earlier))
    if strangers:
        raise RecordError(
            f"{len(strangers)} call(s) at the stand-in API the generator never sent (nor earlier), "
            f"e.g. {strangers[:3]}"
        )
    return out


def leftovers(sent: Iterable[Sent], served: Iterable[Served], earlier: Collection[str]) -> int:
    """Requests for calls of an earlier phase among `served` (not this phase's calls)."""
    now = {s.call_id for s in sent}
    return sum(1 for r in served if r.call_id not in now and r.call_id in earlier)


@dataclass(frozen=True)
class Spread:
    """Percentiles of one interval over the calls, µs."""

    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float

    @classmethod
    def of(cls, values_ns: Iterable[int]) -> Spread:
        ordered = sorted(values_ns)
        return cls(
            percentile(ordered, 0.50),
            percentile(ordered, 0.90),
            percentile(ordered, 0.99),
            ordered[-1] / 1000 if ordered else 0.0,
        )


def percentile(ordered: Sequence[int], q: float) -> float:
    """Nearest rank (the open-loop generator's): the smallest value with at least q of
    the values at or below it; ns in, µs out."""
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))
    return ordered[index] / 1000


@dataclass(frozen=True)
class PerCall:
    """The per-call intervals of one open-loop phase, summarized."""

    calls: int
    """Calls paired (webhooks answered 2xx)."""
    late: Spread
    before: Spread
    after: Spread
    api: Spread
    added: Spread
    multi: int = 0
    """Calls that made more than one call-control request (added > before + after)."""
    leftovers: int = 0
    """Requests for calls of an earlier phase that reached the stand-in during this one
    (left out of the pairing, but their work shared the service's core)."""

    @classmethod
    def of(cls, calls: Sequence[CallTimes], leftovers: int = 0) -> PerCall:
        return cls(
            calls=len(calls),
            late=Spread.of(c.late_ns for c in calls),
            before=Spread.of(c.before_ns for c in calls),
            after=Spread.of(c.after_ns for c in calls),
            api=Spread.of(c.api_ns for c in calls),
            added=Spread.of(c.added_ns for c in calls),
            multi=sum(1 for c in calls if c.requests > 1),
            leftovers=leftovers,
        )
