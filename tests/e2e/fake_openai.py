"""A real local HTTP server standing in for OpenAI's call-control APIs: the Realtime API's
`/v1/realtime/calls/{call_id}/...` and GPT-Live's `/v1/live/sessions/{session_id}/...`.

Every request is recorded; responses are scripted per call id and operation, with an
optional delay, and default to 200. Callbacks registered with `on_request` see each
request and its reply before the reply is sent (a sideband fake ends the call there).
With `websocket_backend` set, `GET /v1/realtime?call_id=...` and
`GET /v1/live/sessions/{id}/attach` (the sideband WebSockets) are passed through, bytes as
they are, to that address: one base URL serves all.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(
    r"^/v1/(?:(?P<realtime>realtime/calls)|live/sessions)/(?P<call_id>[^/]+)/"
    r"(?P<operation>accept|reject|refer|hangup)$"
)
_LIVE_ATTACH = re.compile(r"^/v1/live/sessions/[^/?]+/attach(\?.*)?$")


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: dict[str, Any] | None = None
    delay: float = 0.0
    trickle: float = 0.0
    """Send the headers at once, then the body one byte every `trickle` seconds (a body
    of `trickle_bytes` spaces when `body` is None), until done or the client leaves."""
    trickle_bytes: int = 60
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Recorded:
    call_id: str
    operation: str
    body: Any
    authorization: str | None
    api: str = "realtime"
    """Which API's path it came to: /v1/realtime/calls/... or /v1/live/sessions/..."""


class FakeOpenAI:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[tuple[str, str], deque[Reply]] = defaultdict(deque)
        self.requests: list[Recorded] = []
        self._listeners: list[Callable[[Recorded, Reply], None]] = []
        self.websocket_backend: tuple[str, int] | None = None
        self.trickled = 0
        """Body bytes sent by `Reply(trickle=...)` answers, over all requests."""
        """Where sideband WebSocket upgrades go (e.g. a FakeRealtime's address)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                match = _PATH.match(self.path)
                if match is None:
                    self._reply(Reply(404, {"error": {"message": f"no route {self.path}"}}))
                    return
                request = Recorded(
                    call_id=match["call_id"],
                    operation=match["operation"],
                    api="realtime" if match["realtime"] else "live",
                    body=json.loads(raw) if raw else None,
                    authorization=self.headers.get("authorization"),
                )
                reply = fake._record(request)
                if reply.delay:
                    time.sleep(reply.delay)
                fake._notify(request, reply)
                self._reply(reply)

            def do_GET(self) -> None:
                backend = fake.websocket_backend
                sideband = self.path.startswith("/v1/realtime?") or _LIVE_ATTACH.match(self.path)
                if backend is None or not sideband:
                    self._reply(Reply(404, {"error": {"message": f"no route {self.path}"}}))
                    return
                self.close_connection = True
                head = self.requestline + "\r\n"
                head += "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
                _pipe(self.connection, backend, (head + "\r\n").encode("latin-1"))

            def _reply(self, reply: Reply) -> None:
                payload = json.dumps(reply.body).encode() if reply.body is not None else b""
                if reply.trickle and not payload:
                    payload = b" " * reply.trickle_bytes
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for name, value in reply.headers:
                        self.send_header(name, value)
                    self.end_headers()
                    if not reply.trickle:
                        self.wfile.write(payload)
                        return
                    self.wfile.flush()
                    for index in range(len(payload)):
                        time.sleep(reply.trickle)
                        self.wfile.write(payload[index : index + 1])
                        self.wfile.flush()
                        with fake._lock:
                            fake.trickled += 1
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the router gave up waiting (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, call_id: str, operation: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[(call_id, operation)].extend(replies)

    def for_call(self, call_id: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.call_id == call_id]

    def on_request(self, callback: Callable[[Recorded, Reply], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def _notify(self, request: Recorded, reply: Reply) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(request, reply)

    def _record(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            queue = self._scripts.get((request.call_id, request.operation))
            return queue.popleft() if queue else Reply()


def _pipe(client: socket.socket, backend: tuple[str, int], head: bytes) -> None:
    """Relay a WebSocket connection to `backend` until either side ends.

    A clean end (EOF) is passed on as a clean close; a reset as a reset, so that a dropped
    connection still looks dropped to the client.
    """
    try:
        upstream = socket.create_connection(backend, timeout=5)
    except OSError:
        _abort(client)
        return
    upstream.settimeout(None)
    peers = {client: upstream, upstream: client}
    with upstream, selectors.DefaultSelector() as selector:
        upstream.sendall(head)
        for sock in peers:
            selector.register(sock, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = source.recv(65536)
                except OSError:
                    _abort(peers[source])
                    return
                if not data:
                    return  # both sockets close cleanly on the way out
                try:
                    peers[source].sendall(data)
                except OSError:
                    _abort(source)
                    return


def _abort(sock: socket.socket) -> None:
    """Close with a TCP reset rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
