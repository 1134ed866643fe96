"""Calls through the whole app, in steady state, leave no Python structure growing: once
the callers who come back have called, a call costs nothing that outlives it (its exactly-
once state and its record are rows on disk, expired by the horizon and the retention)."""

from __future__ import annotations

import gc
import threading
import weakref
from collections import Counter

import httpx
from fastapi.testclient import TestClient

from app.main import create_app
from app.rules import compile_rules
from tests.app.test_app import ROUTES, make_settings
from tests.support import incoming_event, new_id, signed

CALLS = 300


def _objects() -> Counter[str]:
    """Objects the collector tracks, by type. Dead weak references are left out: a sqlite3
    connection keeps one per cursor it made and prunes them every 200 cursors (CPython's
    _sqlite), a bounded list that would read as growth here."""
    gc.collect()
    return Counter(
        type(o).__qualname__
        for o in gc.get_objects()
        if not (isinstance(o, weakref.ref) and o() is None)
    )


def _settled(client: TestClient) -> None:
    """The call log's queued writes committed: a read waits for them (read-your-writes).
    Under load its writer thread lags the requests, and the records still queued would
    read as growth."""
    assert client.portal is not None
    client.portal.call(client.app.state.call_log.get, "settled")  # type: ignore[attr-defined]


def _calls(client: TestClient, first: int, count: int) -> None:
    returning = [f"+1646555{n:04d}" for n in range(10)]
    for n in range(first, first + count):
        # Half from callers never seen before, to numbers routed or not; half returning.
        caller = f"+1700{n:07d}" if n % 2 else returning[n % len(returning)]
        called = ("+18005550100", f"+1888{n:07d}", "+19005550100")[n % 3]
        event = incoming_event(new_id(), caller=caller, called=called)
        body, headers = signed(event)  # a new webhook id each
        response = client.post("/webhooks/openai", content=body, headers=headers)
        assert response.status_code == 200, response.text


def test_calls_leave_no_growing_python_structure_and_start_no_thread() -> None:
    app = create_app(
        make_settings(),
        rules=compile_rules(ROUTES, "routes.yaml", region="US"),
        transport=httpx.MockTransport(lambda request: httpx.Response(200)),
    )
    with TestClient(app) as client:
        _calls(client, 0, CALLS)  # warm: imports, label sets, the returning callers
        _settled(client)
        before = _objects()
        threads = {thread.ident for thread in threading.enumerate()}
        _calls(client, CALLS, CALLS)
        _settled(client)
        started = [t.name for t in threading.enumerate() if t.ident not in threads]
        after = _objects()
    # Per-call work on the loop or the long-lived threads (the call log's writer, the
    # state's maintenance): a thread per call would be a wake-up and a GIL hand-over each.
    assert not started, started
    grown = {name: n for name, n in (after - before).items() if n >= CALLS // 5}
    # Less than one object of any type per five calls (a structure kept per call: one or
    # more per call).
    assert not grown, (after - before).most_common(10)
    assert sum(after.values()) - sum(before.values()) < CALLS, (after - before).most_common(10)
