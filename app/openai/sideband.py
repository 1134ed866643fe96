"""The sideband WebSocket of an accepted call: `wss://<api host>/v1/realtime?call_id=...`, or
for GPT-Live `wss://<api host>/v1/live/sessions/{session_id}/attach`.

A thin typed wrapper on `websockets`: JSON events in and out. `SidebandConnector` is the
seam tests replace the network with (they use a real local WebSocket server instead).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidStatus,
    WebSocketException,
)
from websockets.frames import CloseCode

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class SidebandError(Exception):
    """The sideband could not be opened, or broke."""


class SidebandRefused(SidebandError):
    """The API answered the handshake with an HTTP error (404: the call is gone)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"sideband refused with HTTP {status}")
        self.status = status


class Sideband(Protocol):
    async def send(self, event: dict[str, Any]) -> None: ...

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events until the socket closes; SidebandError if it breaks."""
        ...

    async def close(self) -> None: ...


class SidebandConnector(Protocol):
    async def connect(self, call_id: str) -> Sideband: ...


def sideband_url(base_url: str, call_id: str, api: str = "realtime") -> str:
    """`https://api.openai.com/v1` -> `wss://api.openai.com/v1/realtime?call_id=...`, or
    for a GPT-Live session `wss://api.openai.com/v1/live/sessions/{session_id}/attach`."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    base = parts.path.rstrip("/")
    if api == "live":
        path = f"{base}/live/sessions/{quote(call_id, safe='')}/attach"
        return urlunsplit((scheme, parts.netloc, path, "", ""))
    path = base + "/realtime"
    return urlunsplit((scheme, parts.netloc, path, f"call_id={quote(call_id)}", ""))


class WebSocketSideband:
    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    async def send(self, event: dict[str, Any]) -> None:
        try:
            await self._connection.send(json.dumps(event))
        except ConnectionClosed as exc:
            raise SidebandError(f"sideband closed: {exc}") from None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:  # not `async for`: it ends quietly on a 1001 too
                message = await self._connection.recv()
                try:
                    event = json.loads(message)
                except (ValueError, RecursionError):  # also nested past the stack
                    continue  # not ours to crash on
                if isinstance(event, dict):
                    yield event
        except ConnectionClosedOK as exc:
            if exc.rcvd is not None and exc.rcvd.code == CloseCode.GOING_AWAY:
                # The server is going away (a restart), not the call ending: rejoin.
                raise SidebandError(f"sideband closed: {exc}") from None
            return
        except ConnectionClosed as exc:
            raise SidebandError(f"sideband dropped: {exc}") from None

    async def close(self) -> None:
        await self._connection.close(code=1000, reason="switchboard detached")


class WebSocketConnector:
    """Opens a call's sideband; `api` says which API's (see sideband_url)."""

    def __init__(
        self, base_url: str, api_key: str, *, open_timeout: float = 5.0, api: str = "realtime"
    ) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self._open_timeout = open_timeout
        self._api = api

    async def connect(self, call_id: str) -> Sideband:
        try:
            connection = await connect(
                sideband_url(self._base_url, call_id, self._api),
                additional_headers={"Authorization": f"Bearer {self._api_key}"},
                open_timeout=self._open_timeout,
                max_size=MAX_MESSAGE_BYTES,
                user_agent_header="switchboard/0.1",
            )
        except InvalidStatus as exc:
            raise SidebandRefused(exc.response.status_code) from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise SidebandError(f"cannot open the sideband: {type(exc).__name__}: {exc}") from None
        return WebSocketSideband(connection)
