"""Structured JSON logs, and masking of phone numbers (personal data)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


# One encoder for every line: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(default=str, ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry)


class LoopBatchingHandler(logging.StreamHandler[TextIO]):
    """The per-call lines (loggers in `batched`: app.router's) logged on a running event
    loop are written together at the end of its iteration: one write for every call that
    finished in it, not one per line (with PYTHONUNBUFFERED, as the container image sets
    it, each line was a write(2) of its own, 4 % of the process's samples at saturation).
    Every other line is written at once, after what is pending: uvicorn's last lines at
    a SIGTERM come in the loop's last iteration (it re-raises the signal in it), and a
    start-up or error line must not wait. flush() (at exit too) writes what is left."""

    def __init__(
        self, stream: TextIO, *, batched: frozenset[str] = frozenset({"switchboard.call"})
    ) -> None:
        super().__init__(stream)
        self._batched = batched
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            loop = None
            if record.name in self._batched:
                with contextlib.suppress(RuntimeError):
                    loop = asyncio.get_running_loop()
            if loop is None:
                self._pending.append(line)
                self.flush()
                return
            if not self._pending:
                loop.call_soon(self._flush_pending)
            self._pending.append(line)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self.stream.write(text)
            self.stream.flush()

    def _flush_pending(self) -> None:
        with contextlib.suppress(Exception):  # the stream is gone: nowhere left to say so
            self.flush()


def configure_logging(level: str) -> None:
    handler = LoopBatchingHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # A line per call: do not collect what JsonFormatter never writes (logging's own
    # "Optimization" switches): the caller's file and line (a walk up the stack per
    # record), the thread, the process and its multiprocessing name.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # "1 change detected" lines


def mask(value: str | None, *, reveal: bool = False) -> str | None:
    """`+14155550123` -> `+1415*****23`; `alice@x` -> `al***`. None stays None."""
    if value is None or reveal:
        return value
    if len(value) <= 4:
        return "*" * len(value)
    if value.lstrip("+").isdigit():
        keep = 5 if value.startswith("+") else 4
        keep = min(keep, len(value) - 4)
        return value[:keep] + "*" * (len(value) - keep - 2) + value[-2:]
    return value[:2] + "***"


class LogThrottle:
    """At most `burst` lines, then one every `interval / burst` seconds (a token bucket):
    a flood of refused requests must not become a flood of log lines. `admit()` says
    whether this line may be written, and how many were held back since the last one."""

    def __init__(
        self,
        *,
        burst: int = 20,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be at least 1 and interval positive")
        self._burst = float(burst)
        self._rate = burst / interval
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._suppressed = 0

    def admit(self) -> int | None:
        """None: drop this line (counted); else the number of lines dropped before it."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return None
        self._tokens -= 1.0
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
