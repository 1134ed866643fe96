"""Reading the rules files: bounded in size, and used only as a consistent snapshot.

A file written in place is, for a while, half written. A load notes each file it reads
(its stat, and a checksum of the bytes read): a file whose stat moved while it was being
read, or that differs at the end of the load from what was read, means the load saw an
edit in progress, and it is done again (load_rules), a bounded number of times. Replacing
a file in one step (write another, rename it over) never shows a reader half a file.
"""

from __future__ import annotations

import errno
import os
import stat
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from app.rules.errors import ConfigIssue, RulesError
from app.rules.source import MAX_FILE_BYTES, too_large

# Timestamps may be coarse (a kernel tick; 2 s on FAT): a file modified this close to when
# it was read is compared by content at the end of the load, not by its stat alone.
COARSE_NS: Final = 2_000_000_000
CHUNK_BYTES: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class Stamp:
    """What stat says of a file: another file, or any write, changes it."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileChanged(Exception):
    """A file changed while a load was reading it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


@dataclass(frozen=True, slots=True)
class _Read:
    stamp: Stamp
    checksum: int
    started_ns: int


@dataclass(slots=True)
class Snapshot:
    """The files one load read, as they were read."""

    files: dict[str, _Read] = field(default_factory=dict)

    def finish(
        self,
        path: Path,
        stream: BinaryIO,
        started: tuple[os.stat_result, int],
        checksum: int,
    ) -> None:
        """After reading all of `stream` (opened from `path`): FileChanged if it was written
        meanwhile, or `path` is now another file; else the read is noted."""
        before = Stamp.of(started[0])
        after = Stamp.of(os.fstat(stream.fileno()))
        try:
            now = Stamp.of(os.stat(path))
        except OSError:
            raise FileChanged(str(path)) from None
        if not before == after == now:
            raise FileChanged(str(path))
        self.files[str(path)] = _Read(after, checksum, started[1])

    def changed(self) -> str | None:
        """The first file read that is not now as it was read, or None."""
        for name, read in self.files.items():
            try:
                if Stamp.of(os.stat(name)) != read.stamp:
                    return name
                if read.stamp.mtime_ns >= read.started_ns - COARSE_NS and (
                    checksum_of(Path(name)) != read.checksum
                ):
                    return name
            except OSError:
                return name
        return None


class NotAFile(OSError):
    """Not a regular file: a FIFO, a device, a socket, a directory."""


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading, or NotAFile (an OSError). Opening a FIFO with no writer
    would block the loading thread for good (and every reload after it waits for it); a
    device such as /dev/zero never ends. Opened non-blocking, to look before reading."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise NotAFile(errno.EINVAL, "not a regular file (a FIFO or a device)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_started(stream: BinaryIO) -> tuple[os.stat_result, int]:
    """Before reading from `stream`: its stat, and the time (for Snapshot.finish)."""
    return os.fstat(stream.fileno()), time.time_ns()


def checksum_of(path: Path) -> int:
    checksum = 0
    with path.open("rb") as stream:
        while block := stream.read(CHUNK_BYTES):
            checksum = zlib.crc32(block, checksum)
    return checksum


def read_rules_text(path: Path, snapshot: Snapshot | None = None) -> str:
    """The routes file as text (UTF-8, newlines as `Path.read_text` gives them), or
    RulesError: unreadable, not UTF-8, or larger than MAX_FILE_BYTES (its size is known
    before a byte is read, and no more than the bound is ever read). With a snapshot:
    noted there, or FileChanged if it was written while being read."""
    file = str(path)
    try:
        with open_regular(path) as stream:
            started = read_started(stream)
            if started[0].st_size > MAX_FILE_BYTES:
                raise RulesError([too_large(file)])
            data = _read_at_most(stream, MAX_FILE_BYTES, started[0].st_size)
            if snapshot is not None:
                snapshot.finish(path, stream, started, zlib.crc32(data))
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RulesError([ConfigIssue(file, None, None, "", f"cannot read: {reason}")]) from None
    if "\r" in text:  # universal newlines, as text mode reads them
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _read_at_most(stream: BinaryIO, limit: int, expected: int) -> bytes:
    """The whole stream, or RulesError once it has grown past `limit` bytes. Read in
    pieces of about the size stat gave: `read(limit)` would allocate the limit at once."""
    chunks: list[bytes] = []
    total = 0
    while chunk := stream.read(max(expected + 1 - total, CHUNK_BYTES)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise RulesError([too_large(stream.name)])
    return b"".join(chunks)
