"""Reading a routes file: bounded in size before anything is parsed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from app.rules.errors import ConfigIssue, RulesError
from app.rules.source import MAX_FILE_BYTES, too_large


def read_rules_text(path: Path) -> str:
    """The routes file as text (UTF-8, newlines as `Path.read_text` gives them), or
    RulesError: unreadable, not UTF-8, or larger than MAX_FILE_BYTES (its size is known
    before a byte is read, and no more than the bound is ever read)."""
    file = str(path)
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise RulesError([too_large(file)])
            data = _read_at_most(stream, MAX_FILE_BYTES, size)
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
    while chunk := stream.read(max(expected + 1 - total, 1 << 16)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise RulesError([too_large(stream.name)])
    return b"".join(chunks)
