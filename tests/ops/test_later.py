"""app.ops.later: a request's work after its answer."""

from __future__ import annotations

import asyncio

import pytest

from app.ops.later import after_answer, answering


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_outside_a_request_the_work_runs_at_once() -> None:
    done: list[int] = []
    after_answer(done.append, 1)
    assert done == [1]


def test_the_work_waits_for_the_answer_and_runs_in_order() -> None:
    done: list[str] = []
    with answering() as after:
        after_answer(done.append, "log")
        after_answer(done.append, "record")
        done.append("answer sent")
        after()
    assert done == ["answer sent", "log", "record"]


def test_work_left_by_an_exception_still_runs() -> None:
    done: list[str] = []
    with pytest.raises(RuntimeError), answering():
        after_answer(done.append, "record")
        raise RuntimeError("the answer failed")
    assert done == ["record"]


@pytest.mark.anyio
async def test_a_task_the_request_started_does_not_lose_its_work() -> None:
    """It inherits the request's list with its context; once the request is over, its
    work runs at once."""
    done: list[str] = []
    release = asyncio.Event()

    async def later() -> None:
        await release.wait()
        after_answer(done.append, "from the task")

    with answering() as after:
        task = asyncio.create_task(later())
        after()
    release.set()
    await task
    assert done == ["from the task"]
