"""The event loop's commits never wait for the disk to read a WAL page back.

A WAL frame (24 bytes, then a page) is not page-aligned, so every write covers part of a
file page, and a page that is not in the page cache is read from the disk before it is
written: on the loop's thread, inside its commit. Once the WAL starts over the loop writes
over the last round's frames, whose pages the checkpoint's fsync left clean for the kernel
to drop (memory pressure; DAMON pageout on the benchmark's VM). Measured at 200 calls/s:
50-110 such reads per 20 s on the loop, up to 14 ms each. The pages the loop writes next
are now asked into the page cache ahead of it (POSIX_FADV_WILLNEED).

The tests drop the WAL's pages from the page cache (POSIX_FADV_DONTNEED, as the kernel
drops clean pages) and check which are in it again; where the file system keeps them
anyway (tmpfs), there is nothing to read back and they skip.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sqlite3
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.state import sqlite as state_sqlite
from app.state.sqlite import READ_AHEAD_BYTES, SqliteState
from tests.state.sqlite_support import sleeping_state

pytestmark = pytest.mark.skipif(
    not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this OS"
)

PAGE = mmap.PAGESIZE
FRAME = 4096 + 24
IN_CACHE_WAIT = 30.0
"""How long the reads asked for may take to complete (a bound, not a measure: the test
waits for the pages, and fails only when they do not come)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _in_cache(path: Path) -> list[bool]:
    """For each page of the file: in the page cache (read, or written), per mincore(2)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = path.stat().st_size
    pages = (size + PAGE - 1) // PAGE
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            flags = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, flags) == 0, ctypes.get_errno()
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return [bool(b & 1) for b in flags.raw]


def _read_ahead(path: Path, first: int, last: int) -> bool:
    """The pages in [first, last) are in the page cache once the reads asked for had the
    time to complete: all but a few (the kernel may drop some again meanwhile, as the
    benchmark VM's DAMON pageout does). Not asked for, none of them would be."""
    deadline = time.monotonic() + IN_CACHE_WAIT
    while True:
        cached = _in_cache(path)[first:last]
        if cached.count(False) < len(cached) // 20:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _size(path: Path) -> int:
    return path.stat().st_size


def _next_write(state: SqliteState) -> int:
    """Where the next frame goes in the WAL file: after mxFrame frames (the WAL-index
    header at the start of the -shm file, sqlite.org/walformat.html)."""
    with open(f"{state.path}-shm", "rb") as shm:
        frames: int = struct.unpack("=I", shm.read(20)[16:20])[0]
    return 32 + frames * FRAME


def _fill(conn: sqlite3.Connection, n: int) -> None:
    """One transaction of ~20 frames (as the loop's batches write them)."""
    conn.executemany(
        "INSERT OR REPLACE INTO owners (owner, beat) VALUES (?, ?)",
        [(f"{n:08d}-{i:02d}-" + "x" * 400, 1.0) for i in range(20)],
    )


@pytest.fixture
async def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SqliteState]:
    monkeypatch.setattr(state_sqlite, "WAL_RESTART_FRAMES", 64, raising=False)
    with sleeping_state(tmp_path / "state.db") as state:  # the test runs its checkpoints
        yield state


async def _wal_started_over(state: SqliteState) -> Path:
    """A WAL of ~2,800 frames (~11 MB, over twice what is read ahead), copied and started
    over by the maintenance thread's checkpoint, its pages dropped from the page cache."""
    for n in range(300):
        await state.run(_fill, n, deadline=None)
    wal = Path(f"{state.path}-wal")
    assert _size(wal) > 2 * READ_AHEAD_BYTES
    maintenance = state._connect()
    try:
        assert state_sqlite._checkpoint(maintenance)  # copied: the next write starts over
    finally:
        maintenance.close()
    _drop(wal)
    if sum(_in_cache(wal)) > 2:
        pytest.skip("this file system keeps the WAL's pages in memory (nothing to read back)")
    return wal


@pytest.mark.anyio
async def test_the_pages_the_loop_writes_next_are_read_ahead(state: SqliteState) -> None:
    wal = await _wal_started_over(state)
    await state.run(_fill, 1000, deadline=None)  # the first batch of the new round
    # What it wrote, and what follows it for READ_AHEAD_BYTES, is in the page cache; the
    # rest of the old round is not (nothing reads the whole WAL back).
    ahead = READ_AHEAD_BYTES // PAGE
    assert _read_ahead(wal, 0, ahead)
    cached = _in_cache(wal)
    assert not any(cached[ahead + 64 :]), "read far beyond what the loop writes next"
    # Past half of it, the next batch has the following part asked for.
    for n in range(1001, 1001 + 60):
        await state.run(_fill, n, deadline=None)
    written = _next_write(state) // PAGE
    assert written > ahead // 2
    assert _read_ahead(wal, written, written + ahead // 2)


@pytest.mark.anyio
async def test_the_first_write_of_a_new_round_finds_its_pages_read(state: SqliteState) -> None:
    """The maintenance thread's checkpoint asks for the WAL's first pages when the next
    write starts it over (that write comes before any of the loop's asks)."""
    wal = await _wal_started_over(state)
    maintenance = state._connect()
    try:
        state._checkpoint(maintenance)  # nothing new: every frame was copied
    finally:
        maintenance.close()
    assert _read_ahead(wal, 0, READ_AHEAD_BYTES // PAGE)
