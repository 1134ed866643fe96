"""The in-call waits cancelled as what they wait for completes are cancelled.

Python 3.11's asyncio.wait_for returns the inner result when the caller's cancellation
comes once the inner wait has completed (fixed in 3.12): a session the call's end or the
shutdown cancels went on. These waits use asyncio.timeout() instead; on any Python the
cancellation must propagate (see tests/support.swallowed_cancellations).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from app.incall.control import AnyReplicaControl
from app.incall.session import CallSession, InCallManager
from app.openai.callcontrol import CallController
from app.openai.sideband import SidebandConnector
from app.ops.metrics import Metrics
from app.records.calllog import CallLog
from app.rules.ruleset import CallFeatures
from app.state.livecalls import LiveCall, MemoryLiveCalls
from tests.support import swallowed_cancellations

LONG = 60.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def manager(registry: MemoryLiveCalls | None = None) -> InCallManager:
    """A manager whose sideband and call control are never reached by these waits."""
    return InCallManager(
        connector=cast(SidebandConnector, None),
        controller=cast(CallController, None),
        call_log=cast(CallLog, None),
        metrics=Metrics(),
        registry=registry,
    )


class Pending:
    """Awaitables that complete when the test says (the last one made)."""

    def __init__(self) -> None:
        self.made: list[asyncio.Future[None]] = []

    async def wait(self, *_: Any) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.made.append(done)
        await done

    def complete(self) -> None:
        self.made[-1].set_result(None)


@pytest.mark.anyio
async def test_registry_request_cancelled_as_it_completes_is_cancelled() -> None:
    """A release or a hand-over at the end of a session (InCallManager._registry)."""
    registry = Pending()
    calls = manager()
    swallowed = await swallowed_cancellations(
        lambda: calls._registry("release", registry.wait(), "rtc_1"), registry.complete
    )
    assert swallowed == []


@pytest.mark.anyio
async def test_say_cancelled_as_the_agent_falls_idle_is_cancelled() -> None:
    """A line waits for the response in progress to end first (CallSession._say)."""
    session = CallSession(manager(), "rtc_1", CallFeatures())

    def busy_then_say() -> asyncio.Future[None]:
        session._idle.clear()  # a response is running
        return asyncio.ensure_future(session._say("Ten seconds left."))

    swallowed = await swallowed_cancellations(busy_then_say, session._idle.set)
    assert swallowed == []


@pytest.mark.anyio
async def test_forget_cancelled_as_the_registry_answers_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operator's hangup relayed here ends with the call forgotten (control._forget)."""
    registry = MemoryLiveCalls("here", lease_seconds=LONG)
    forgetting = Pending()
    monkeypatch.setattr(registry, "forget", forgetting.wait)
    control = AnyReplicaControl(manager(registry), registry)
    live = LiveCall("rtc_1", "realtime", 0.0, CallFeatures(), owner="here")
    swallowed = await swallowed_cancellations(lambda: control._forget(live), forgetting.complete)
    assert swallowed == []
