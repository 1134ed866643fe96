"""A real local HTTP server standing in for OpenAI's call-control API.

Every request is recorded; responses are scripted per call id and operation, with an
optional delay, and default to 200.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(
    r"^/v1/realtime/calls/(?P<call_id>[^/]+)/(?P<operation>accept|reject|refer|hangup)$"
)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: dict[str, Any] | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Recorded:
    call_id: str
    operation: str
    body: Any
    authorization: str | None


class FakeOpenAI:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[tuple[str, str], deque[Reply]] = defaultdict(deque)
        self.requests: list[Recorded] = []
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
                reply = fake._record(
                    Recorded(
                        call_id=match["call_id"],
                        operation=match["operation"],
                        body=json.loads(raw) if raw else None,
                        authorization=self.headers.get("authorization"),
                    )
                )
                if reply.delay:
                    time.sleep(reply.delay)
                self._reply(reply)

            def _reply(self, reply: Reply) -> None:
                payload = json.dumps(reply.body).encode() if reply.body is not None else b""
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
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

    def _record(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            queue = self._scripts.get((request.call_id, request.operation))
            return queue.popleft() if queue else Reply()
