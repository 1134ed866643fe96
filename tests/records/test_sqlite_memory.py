"""The SQLite call log bounds the page cache of each of its connections: the writer's, and
each reader's (one per worker thread that ever read)."""

from __future__ import annotations

import threading
from pathlib import Path

from app.records.sqlite import SqliteCallLog


def test_the_writer_and_every_reader_bound_their_page_cache(tmp_path: Path) -> None:
    log = SqliteCallLog(tmp_path / "calls.db")
    log.open()
    try:
        assert log._write_conn is not None
        readers = [log._reader()]
        other = threading.Thread(target=lambda: readers.append(log._reader()))
        other.start()
        other.join()
        assert readers[0] is not readers[1]  # a connection per thread

        def cache(conn: object) -> int:
            return int(conn.execute("PRAGMA cache_size").fetchone()[0])  # type: ignore[attr-defined]

        # In KiB (negative); the writer's is SQLite's usual default, set explicitly.
        assert cache(log._write_conn) == -2000
        # Discarded at every commit of the writer: a reader's serves one query, and each
        # worker thread keeps one. Before: SQLite's default, 2000 KiB each.
        assert [cache(c) for c in readers] == [-256, -256]
    finally:
        log.close()
