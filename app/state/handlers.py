"""One handler per call across the two APIs that may announce it.

The first event of a SIP dialog (see app.sip.dialog) whose API is to answer the call takes the
dialog for that API, for good; every later event of the dialog learns which API has it. Built
on the claim store's two operations, so it holds across replicas exactly as far as the store
does (the memory store: one process; a shared store: all of them).
"""

from __future__ import annotations

import asyncio
from typing import Final

from app.intake.events import APIS, Api
from app.state.claims import Answer, ClaimStore

PREFIX: Final = "dialog:"


class DialogHandlers:
    def __init__(self, store: ClaimStore) -> None:
        self._store = store
        self._waiters: dict[str, asyncio.Event] = {}
        """Events of this process waiting for a dialog to be taken (woken early by take)."""

    async def wait_taken(self, dialog: str, seconds: float) -> None:
        """Wait up to `seconds` for an event of this process to take the dialog. Another
        replica's take is not seen here: the caller then waits the whole time."""
        woken = self._waiters.setdefault(dialog, asyncio.Event())
        try:
            # timeout(), not wait_for(): Python 3.11's wait_for drops a cancellation that
            # comes as the dialog is taken.
            async with asyncio.timeout(seconds):
                await woken.wait()
        except TimeoutError:
            pass
        finally:
            if self._waiters.get(dialog) is woken:
                del self._waiters[dialog]

    async def take(self, dialog: str, api: Api, deadline: float) -> Api | None:
        """Make `api` the dialog's handler unless one is already chosen; return the handler,
        or None when the store cannot tell yet (an earlier claim still unfinished).
        `deadline` (time.monotonic()) bounds a wait for such a claim."""
        # Remembered at once and for the store's horizon: a handler is never given up, even
        # when its action fails in a way a redelivery (of that same event) retries.
        kept = await self._store.keep_first(PREFIX + dialog, Answer(200, {"api": api}), deadline)
        if kept is None:
            return None
        handler = kept.body.get("api")
        if handler != api:
            return handler if handler in APIS else None
        self.taken(dialog)
        return api

    def taken(self, dialog: str) -> None:
        """An event of this process took the dialog (here, or with its claim): wake the
        events waiting for that."""
        woken = self._waiters.get(dialog)
        if woken is not None:
            woken.set()
