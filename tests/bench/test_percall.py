"""The per-call latency of the end-to-end benchmark (bench.e2e.percall): the generator's
and the stand-in API's records paired by call id, and what the report makes of them.
Timestamps here are made up: nothing is timed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.e2e import render
from bench.e2e.openloop import Connection, Generator, records
from bench.e2e.percall import (
    CallTimes,
    PerCall,
    RecordError,
    Sent,
    Served,
    Spread,
    api_call_id,
    call_id_of,
    leftovers,
    pair,
    sent_records,
    served_records,
)
from bench.e2e.run import Config, E2EResult, Latency, _latency
from bench.e2e.standin import StandIn, Stats
from bench.e2e.webhooks import bench_secret, read_requests, write_requests
from bench.workload import CallMaker, write_list, write_routes


def sent(call_id: str, due: int, at: int, read: int, status: int = 200) -> Sent:
    return Sent(call_id, due_ns=due, sent_ns=at, read_ns=read, status=status)


def served(call_id: str, arrived: int, written: int, operation: str = "accept") -> Served:
    return Served(call_id, operation, arrived_ns=arrived, written_ns=written)


def test_a_call_splits_into_before_the_api_the_api_and_after() -> None:
    (call,) = pair(
        [sent("rtc_a", due=1_000, at=1_300, read=9_000)],
        [served("rtc_a", arrived=4_000, written=4_500)],
    )
    assert call == CallTimes(
        call_id="rtc_a",
        late_ns=300,
        before_ns=2_700,
        after_ns=4_500,
        api_ns=500,
        added_ns=7_200,
        requests=1,
    )
    assert call.added_ns == call.before_ns + call.after_ns


def test_calls_pair_by_call_id_whatever_order_the_api_saw_them_in() -> None:
    calls = pair(
        [
            sent("rtc_a", due=0, at=10, read=1_010),
            sent("rtc_b", due=100, at=100, read=600),
        ],
        [served("rtc_b", arrived=200, written=250), served("rtc_a", arrived=700, written=710)],
    )
    assert [(c.call_id, c.before_ns, c.after_ns, c.api_ns) for c in calls] == [
        ("rtc_a", 690, 300, 10),
        ("rtc_b", 100, 350, 50),
    ]


def test_a_call_with_two_requests_counts_the_routers_time_between_them() -> None:
    # A referred call: accept, then refer. The gap between them is the router's.
    (call,) = pair(
        [sent("rtc_r", due=0, at=0, read=10_000)],
        [
            served("rtc_r", arrived=2_000, written=2_100, operation="accept"),
            served("rtc_r", arrived=5_000, written=5_200, operation="refer"),
        ],
    )
    assert (call.before_ns, call.after_ns, call.api_ns) == (2_000, 4_800, 300)
    assert call.added_ns == 10_000 - 300
    assert call.requests == 2
    assert PerCall.of([call]).multi == 1


def test_an_answered_webhook_without_its_api_request_is_an_error() -> None:
    with pytest.raises(RecordError, match=r"1 webhook.*without a request.*rtc_b"):
        pair(
            [sent("rtc_a", 0, 0, 100), sent("rtc_b", 0, 0, 100)],
            [served("rtc_a", 10, 20)],
        )


def test_an_api_request_for_a_call_never_sent_is_an_error() -> None:
    with pytest.raises(RecordError, match=r"never sent.*rtc_z"):
        pair([sent("rtc_a", 0, 0, 100)], [served("rtc_a", 10, 20), served("rtc_z", 10, 20)])


def test_a_call_id_sent_twice_is_an_error() -> None:
    with pytest.raises(RecordError, match="sent twice"):
        pair([sent("rtc_a", 0, 0, 100), sent("rtc_a", 0, 0, 100)], [served("rtc_a", 10, 20)])


def test_webhooks_not_answered_2xx_are_left_out_with_their_requests() -> None:
    calls = pair(
        [
            sent("rtc_ok", 0, 0, 100),
            sent("rtc_503", 0, 0, 100, status=503),
            sent("rtc_lost", 0, 0, 0, status=0),  # a socket error: no answer
        ],
        [served("rtc_ok", 10, 20), served("rtc_503", 10, 20)],
    )
    assert [c.call_id for c in calls] == ["rtc_ok"]


def test_records_are_read_from_columns_of_equal_length() -> None:
    assert sent_records(
        {"call_id": ["a"], "due_ns": [1], "sent_ns": [2], "read_ns": [3], "status": [200]}
    ) == [Sent("a", 1, 2, 3, 200)]
    assert served_records(
        {"call_id": ["a"], "operation": ["accept"], "arrived_ns": [1], "written_ns": [2]}
    ) == [Served("a", "accept", 1, 2)]
    with pytest.raises(RecordError, match="different lengths"):
        served_records(
            {"call_id": ["a", "b"], "operation": ["x"], "arrived_ns": [1], "written_ns": [2]}
        )
    with pytest.raises(RecordError, match="lack"):
        sent_records({"call_id": ["a"]})


def test_percentiles_are_nearest_rank_in_microseconds() -> None:
    spread = Spread.of(range(1_000, 101_000, 1_000))  # 1..100 µs
    assert spread == Spread(p50_us=50, p90_us=90, p99_us=99, max_us=100)
    assert Spread.of([]) == Spread(0, 0, 0, 0)


def test_the_call_id_of_a_signed_webhook_and_of_a_request_to_the_api(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    listed = write_list(rules, 20)
    maker = CallMaker(write_routes(rules, 10, listed.path), listed)
    path = write_requests(tmp_path / "r.bin", maker, 3, secret=bench_secret(), host="h")
    ids = [call_id_of(request) for request in read_requests(path)]
    assert len(set(ids)) == 3 and all(i.startswith("rtc_") for i in ids)
    for request, call_id in zip(read_requests(path), ids, strict=True):
        assert f'"call_id":"{call_id}"'.encode() in request
    floor = b"POST /v1/realtime/calls/rtc_floor7/accept HTTP/1.1\r\nhost: x\r\n\r\n{}"
    assert call_id_of(floor) == "rtc_floor7"
    assert api_call_id(b"/v1/live/sessions/sess_1/reject") == "sess_1"
    with pytest.raises(RecordError):
        call_id_of(b"GET / HTTP/1.1\r\n\r\n")


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


def test_the_stand_in_records_each_request_only_while_timing() -> None:
    stats = Stats()
    standin = StandIn(stats)
    transport = FakeTransport()
    standin.connection_made(transport)  # type: ignore[arg-type]
    standin.data_received(_request("POST", "/v1/realtime/calls/rtc_before/accept", b"{}"))
    standin.data_received(_request("POST", "/_timings"))
    standin.data_received(_request("POST", "/v1/realtime/calls/rtc_1/accept", b"{}"))
    standin.data_received(_request("POST", "/v1/realtime/calls/rtc_1/refer", b"{}"))
    standin.data_received(_request("GET", "/_timings"))
    standin.data_received(_request("POST", "/v1/realtime/calls/rtc_after/accept", b"{}"))
    head, _, body = transport.written[4].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    records = served_records(json.loads(body))
    assert [(r.call_id, r.operation) for r in records] == [
        ("rtc_1", "accept"),
        ("rtc_1", "refer"),
    ]
    assert all(0 < r.arrived_ns <= r.written_ns for r in records)
    assert stats.paths == []  # stopped: the request after it was not kept
    assert stats.operations["accept"] == 3  # counting goes on as before


def test_the_generator_records_each_request_by_index_and_call_id() -> None:
    gen = Generator("127.0.0.1", 0)
    requests = [
        _request("POST", "/v1/realtime/calls/rtc_a/accept"),
        _request("POST", "/v1/realtime/calls/rtc_b/accept"),
    ]
    gen.due_ns, gen.sent_ns, gen.read_ns, gen.status = [5, 6], [7, 0], [9, 0], [200, 0]
    assert records(gen, requests) == {
        "call_id": ["rtc_a", "rtc_b"],
        "due_ns": [5, 6],
        "sent_ns": [7, 0],
        "read_ns": [9, 0],
        "status": [200, 0],
    }


def test_a_connection_timestamps_the_send_and_the_answers_last_byte() -> None:
    import asyncio

    async def exchange() -> tuple[int, Connection]:
        conn = Connection()
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        answer = conn.send(b"POST / HTTP/1.1\r\n\r\n")
        assert conn.sent_ns > 0 and conn.read_ns == 0
        conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{")
        assert conn.read_ns == 0  # the body is not all there yet
        conn.data_received(b"}")
        return await answer, conn

    status, conn = asyncio.run(exchange())
    assert status == 200
    assert conn.read_ns >= conn.sent_ns and not conn.buffered


def _result(per_call: PerCall | str | None, count: int = 3) -> E2EResult:
    summary = {
        "count": count,
        "p50_us": 3000.0,
        "p90_us": 5000.0,
        "p99_us": 8700.0,
        "max_us": 9000.0,
        "statuses": {"200": count},
        "errors": 0,
    }
    floor = {**summary, "p50_us": 500.0, "p99_us": 1600.0}
    result = E2EResult(dataclasses.replace(Config.tiny(), workers=0))
    result.floor = _latency("stand-in alone", 100.0, floor, 0.0, PerCall.of([]))
    result.latency = [_latency("switchboard", 100.0, summary, 0.3, per_call)]
    return result


def _calls(*added_us: int) -> PerCall:
    return PerCall.of(
        [
            CallTimes(f"c{i}", 0, a * 600, a * 400, 50_000, a * 1000, 1)
            for i, a in enumerate(added_us)
        ]
    )


def _latency_row(text: str) -> str:
    return next(line for line in text.splitlines() if "router-added latency" in line)


def test_the_target_row_is_the_per_call_p99_and_the_old_measure_stays_visible() -> None:
    text = _latency_row(render.targets(_result(_calls(200, 400, 900))))
    assert text.startswith("| router-added latency p99 <= 1 ms at 100 calls/s | 900 µs: the p99")
    assert text.endswith("| met |")
    # The old measure (end to end p99 - the stand-in's p50) is shown, not used.
    assert "old measure, p99 - stand-in p50: 8200 µs" in text
    assert "waited 0 ms for a core in the 0.5 s" in text
    detail = render.render(_result(_calls(200, 400, 900)))
    assert "| 8200 |" in detail  # the old measure's column
    assert "**400 / 900 / 900 / 900**" in detail


def test_the_target_is_missed_when_a_call_was_not_paired() -> None:
    # 3 answered, 2 paired: a call left out could be the slowest.
    text = _latency_row(render.targets(_result(_calls(200, 400), count=3)))
    assert text.endswith("| **missed** |")
    unpaired = _latency_row(render.targets(_result("1 webhook(s) answered 2xx without a request")))
    assert "not measured: 1 webhook(s) answered 2xx" in unpaired
    assert unpaired.endswith("| **missed** |")


def test_latency_rows_keep_a_pairing_error() -> None:
    row = _result("no records").latency[0]
    assert isinstance(row, Latency)
    assert (row.per_call, row.per_call_error) == (None, "no records")


def test_run_queue_wait_is_summed_over_every_thread() -> None:
    import os
    import threading

    from bench.e2e.procs import Usage, run_delay_ns, usage

    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        main = int(Path(f"/proc/self/task/{os.getpid()}/schedstat").read_text().split()[1])
        assert len(os.listdir("/proc/self/task")) >= 2
        assert run_delay_ns(os.getpid()) >= main  # read later, and the worker's added
    finally:
        stop.set()
        worker.join()
    assert run_delay_ns(2**22 + 1) == 0  # no such process (above pid_max's default)
    assert usage(os.getpid()).waited_seconds >= 0
    assert Usage(1.0, 10, 0.5) - Usage(0.25, 4, 0.125) == Usage(0.75, 6, 0.375)


def test_requests_of_an_earlier_phases_calls_are_left_out_and_counted() -> None:
    # wrk stops with deliveries in flight; the service still acts on them after.
    webhooks = [sent("rtc_now", 0, 0, 100)]
    api = [served("rtc_now", 10, 20), served("rtc_wrk", 30, 40)]
    earlier = {"rtc_wrk", "rtc_now"}  # the bench's set holds this phase's calls too
    assert [c.call_id for c in pair(webhooks, api, earlier)] == ["rtc_now"]
    assert leftovers(webhooks, api, earlier) == 1
    assert PerCall.of(pair(webhooks, api, earlier), 1).leftovers == 1
    # Only calls the caller names: any other stranger is still an error.
    with pytest.raises(RecordError, match="never sent"):
        pair(webhooks, [*api, served("rtc_who", 30, 40)], earlier)
