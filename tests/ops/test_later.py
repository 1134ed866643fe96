"""app.ops.later: a request's work after its answer."""

from __future__ import annotations

import asyncio

import pytest

from app.ops.later import after_answer, answering, when_answered


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_outside_a_request_the_work_runs_at_once() -> None:
    done: list[int] = []
    after_answer(done.append, 1)
    assert done == [1]


@pytest.mark.anyio
async def test_outside_a_request_a_wait_is_awaited_at_once() -> None:
    done: list[str] = []

    async def keep() -> None:
        await asyncio.sleep(0)
        done.append("kept")

    await when_answered(keep)
    assert done == ["kept"]


@pytest.mark.anyio
async def test_the_work_waits_for_the_answer_and_runs_in_order() -> None:
    """The log line and record first (nothing else runs between the answer and them),
    then what waits (the store keeping the answer)."""
    done: list[str] = []

    async def keep(what: str) -> None:
        await asyncio.sleep(0)
        done.append(what)

    async with answering() as after:
        after_answer(done.append, "log")
        await when_answered(keep, "kept")
        after_answer(done.append, "record")
        done.append("answer sent")
        await after()
    assert done == ["answer sent", "log", "record", "kept"]


@pytest.mark.anyio
async def test_work_left_by_an_exception_still_runs() -> None:
    done: list[str] = []

    async def keep() -> None:
        done.append("kept")

    with pytest.raises(RuntimeError):
        async with answering():
            after_answer(done.append, "record")
            await when_answered(keep)
            raise RuntimeError("the answer failed")
    assert done == ["record", "kept"]


@pytest.mark.anyio
async def test_a_failed_wait_does_not_stop_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    async def fail() -> None:
        raise RuntimeError("store down")

    async with answering() as after:
        await when_answered(fail)
        after_answer(done.append, "record")
        await after()
    assert done == ["record"]
    assert "work after the answer failed" in caplog.text


@pytest.mark.anyio
async def test_a_cancelled_request_still_runs_its_work() -> None:
    """Cancelled after its answer (a shutdown past its grace): the wait it was in is
    interrupted; the log line and record still run, and so do the waits after it."""
    done: list[str] = []
    entered = asyncio.Event()

    async def slow() -> None:
        entered.set()
        await asyncio.sleep(10)
        done.append("slow")

    async def keep() -> None:
        done.append("kept")

    async def request() -> None:
        async with answering() as after:
            await when_answered(slow)
            await when_answered(keep)
            after_answer(done.append, "record")
            await after()

    task = asyncio.create_task(request())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == ["record", "kept"]


@pytest.mark.anyio
async def test_a_task_the_request_started_does_not_lose_its_work() -> None:
    """It inherits the request's list with its context; once the request is over, its
    work runs at once."""
    done: list[str] = []
    release = asyncio.Event()

    async def later() -> None:
        await release.wait()
        after_answer(done.append, "from the task")

    async with answering() as after:
        task = asyncio.create_task(later())
        await after()
    release.set()
    await task
    assert done == ["from the task"]
