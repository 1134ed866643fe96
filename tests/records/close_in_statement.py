"""`python -m tests.records.close_in_statement DIR`: SqliteCallLog.close() called while a
read is inside a statement (SQLite's step, the GIL released), in a process of its own: a
close that clears the read's connection there crashes it (a segmentation fault), which
would take pytest with it. Prints the call read, and exits 0 when nothing crashed.

The read stops inside its first statement (a progress handler: called by SQLite from its
step), starts close() in a thread and waits until close() says that it waits for the
reads in flight (calllog_close_waits), or for at most BLOCKED_CLOSE.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from app.records.calllog import CallRecord
from app.records.sqlite import SqliteCallLog

BLOCKED_CLOSE = 2.0
"""How long the read stays in its statement for a close() that did not say it waits for
it: one that closes the connection is blocked inside SQLite by then (it waits for the
statement to end). Only a close() before the fix waits this long; with the fix, the read
goes on as soon as close() says it waits for the reads (calllog_close_waits)."""


class Reached(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "calllog_close_waits":
            self.event.set()


class Reader(sqlite3.Connection):
    """Stops inside the first statement that reads the calls table, once."""

    close_log: threading.Thread | None = None
    reached: threading.Event | None = None

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("SELECT call_id") and self.close_log is not None:
            self.set_progress_handler(self._in_statement, 1)
        return super().execute(sql, *args)

    def _in_statement(self) -> int:
        closing, self.close_log = self.close_log, None
        if closing is None or self.reached is None:
            return 0
        closing.start()
        # A close() that closes the connection under the statement blocks inside SQLite
        # until the statement ends (nothing tells it here): BLOCKED_CLOSE is its bound.
        self.reached.wait(BLOCKED_CLOSE)
        return 0


def main(directory: Path) -> None:
    log = SqliteCallLog(directory / "calls.db")
    log.open()
    log.started(
        CallRecord(
            call_id="rtc_1",
            started_at=time.time(),
            route="support",
            action="accept",
            outcome="accepted",
            status="active",
            caller=None,
            called=None,
            rules_version="v1",
        )
    )
    reached = Reached()
    logger = logging.getLogger("switchboard.calllog")
    logger.setLevel(logging.INFO)
    logger.addHandler(reached)

    def connect(self: SqliteCallLog) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False, factory=Reader)
        conn.close_log = threading.Thread(target=log.close, name="closer")
        conn.reached = reached.event
        return conn

    SqliteCallLog._connect = connect  # type: ignore[method-assign]  # the readers' only
    found = log._get("rtc_1")
    print("read", found.call_id if found is not None else None, flush=True)
    log.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
