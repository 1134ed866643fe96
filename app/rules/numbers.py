"""Number sets (exact values and prefixes, indexed) and number list files.

Matching never scans: exact numbers are a hash set (large ones in shards), prefixes a set
looked up once per prefix length of the number (at most ~16 lookups). List files are plain
text or CSV, one number per line, `#` comments; a million E.164 lines load in about half a
second because already-E.164 entries skip phonenumbers entirely.
"""

from __future__ import annotations

import csv
import functools
import gc
import io
import itertools
import re
import zlib
from collections.abc import Container, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import phonenumbers

from app.rules.files import Snapshot, open_regular, read_started
from app.rules.lookup import listed
from app.sip.identity import to_e164

_PREFIX = re.compile(r"\+?[0-9]{1,20}")
_SEPARATORS = re.compile(r"[\s\-.()]")
MAX_LIST_ERRORS = 10

NUMBER_TYPES = {
    "fixed_line": phonenumbers.PhoneNumberType.FIXED_LINE,
    "mobile": phonenumbers.PhoneNumberType.MOBILE,
    "fixed_line_or_mobile": phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    "toll_free": phonenumbers.PhoneNumberType.TOLL_FREE,
    "premium_rate": phonenumbers.PhoneNumberType.PREMIUM_RATE,
    "shared_cost": phonenumbers.PhoneNumberType.SHARED_COST,
    "voip": phonenumbers.PhoneNumberType.VOIP,
    "personal_number": phonenumbers.PhoneNumberType.PERSONAL_NUMBER,
    "pager": phonenumbers.PhoneNumberType.PAGER,
    "uan": phonenumbers.PhoneNumberType.UAN,
    "voicemail": phonenumbers.PhoneNumberType.VOICEMAIL,
    "unknown": phonenumbers.PhoneNumberType.UNKNOWN,
}
# Where a plan cannot tell mobile from fixed (the US, Canada...), the number is both.
_EITHER = frozenset({"fixed_line", "mobile"})


def normalise_pattern(pattern: str, region: str) -> str:
    """`+1 415 555 0100` -> `+14155550100`; `+1415*` stays a prefix; `1001` an extension."""
    text = _SEPARATORS.sub("", pattern.strip())
    if text.endswith("*"):
        if not _PREFIX.fullmatch(text[:-1]):
            raise ValueError(f"{pattern!r} is not a number prefix (digits, optional +, then *)")
        return text
    if not _PREFIX.fullmatch(text):
        raise ValueError(f"{pattern!r} is not a phone number")
    e164 = to_e164(text, region)
    if e164 is None and text.startswith("+"):
        raise ValueError(f"{pattern!r} is not a possible E.164 number")
    return e164 or text  # short codes and extensions are compared as dialled


def e164_prefix_hint(stem: str, region: str) -> str | None:
    """The E.164 form of a prefix written nationally (`020` in GB -> `+4420`, `0049` in
    DE -> `+49`), or None. Such a prefix is compared as dialled, which suits extensions
    but never matches a number the trunk sent in E.164, hence a warning at load."""
    if stem.startswith("+"):
        return None
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None:
        return None
    international = metadata.international_prefix
    if international:
        found = re.match(international, stem)
        if found and found.end() < len(stem):
            return "+" + stem[found.end() :]
    trunk = metadata.national_prefix
    if trunk and stem.startswith(trunk) and len(stem) > len(trunk) + 1:
        return f"+{metadata.country_code}{stem[len(trunk) :]}"
    return None


class Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...


# A set of this many exact numbers or more is kept in shards (see ShardedSet).
SHARD_FROM = 1 << 16
# Building one shard (dict.fromkeys of its share of the numbers) is a single C call of
# ~250 ns a number (each string's hash is read from memory the CPU has not seen for a
# while): ~4 ms for a 64th of a million, ~1 ms for a 256th. Lookups cost the same.
SHARD_BITS = 8
SHARDS = 1 << SHARD_BITS
_SHARD_MASK = SHARDS - 1


class ShardedSet(AbstractSet[str]):
    """An immutable set of many strings, kept in SHARDS parts split by hash.

    One frozenset of a million numbers is grown and freed by single C calls of 25-50 ms,
    with the GIL held throughout: while a worker thread loads or releases one, the event
    loop cannot run. Each shard is SHARDS times smaller, and whoever drops the last
    reference to a large set can drop its shards one at a time (app/reload.py does).

    The shards are dicts (number -> None), not frozensets: a dict holding only strings is
    not tracked by the cyclic garbage collector, so no collection ever walks its entries
    (a million in frozensets cost every collection that reached them 35-50 ms), and it
    takes less memory (a str caches its hash, so string-keyed dicts do not store it).
    `NumberSet` answers `in` ~0.2-0.3 µs slower than with one frozenset."""

    __slots__ = ("_len", "shards")

    def __init__(self, shards: tuple[dict[str, None], ...]) -> None:
        if len(shards) != SHARDS:
            raise ValueError(f"{len(shards)} shards, expected {SHARDS}")
        self.shards = shards
        self._len = sum(map(len, shards))

    def __contains__(self, value: object) -> bool:
        return value in self.shards[hash(value) & _SHARD_MASK]

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self.shards)

    def __len__(self) -> int:
        return self._len

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ShardedSet):
            return self.shards == other.shards  # equal strings hash alike: same shards
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash(self._len)  # equal sets have equal sizes; hashing every entry is slow

    def __reduce__(self) -> tuple[Any, ...]:
        # The shards follow hash(), which differs from one process to the next.
        return exact_set, (list(self),)

    def __repr__(self) -> str:
        return f"<ShardedSet of {self._len} items>"


def exact_set(values: Iterable[str]) -> AbstractSet[str]:
    """A frozenset of `values`, or a ShardedSet when SHARD_FROM or more differ.

    Large or small, no single C call here takes more than about SHARD_FROM items (the
    loop over `values` is Python: a generator gives the event loop its turns)."""
    items = iter(values)
    head = dict.fromkeys(itertools.islice(items, SHARD_FROM))  # a dict of str: untracked
    more = next(items, None)
    if more is None and len(head) < SHARD_FROM:
        return frozenset(head)
    # Lists of strings are filled, then made into dicts one at a time: ~0.3 s a million
    # where filling the dicts directly takes ~0.5 s (cache misses). But a list is tracked
    # by the garbage collector, and every young collection (triggered on any thread, the
    # event loop's included) that finds these lists in a young generation walks every
    # entry: ~50 ms at a million. So they are made old while empty (a young collection,
    # under a millisecond); full collections are held off during loads (app.rules.gcpause).
    buckets: list[list[str]] = [[] for _ in range(SHARDS)]
    if gc.isenabled():
        gc.collect(1)
    add, key, mask = [bucket.append for bucket in buckets], hash, _SHARD_MASK
    for value in head:
        add[key(value) & mask](value)
    del head
    if more is not None:
        add[key(more) & mask](more)
    for value in items:
        add[key(value) & mask](value)
    # The bound methods hold the lists too: _from_buckets must drop the last reference to
    # each list as it goes (a million decrefs in one go take ~10-15 ms).
    del add
    return _from_buckets(buckets)


def _from_buckets(buckets: list[list[str]]) -> AbstractSet[str]:
    shards = []
    for i, bucket in enumerate(buckets):
        shards.append(dict.fromkeys(bucket))
        buckets[i] = []
    if sum(map(len, shards)) < SHARD_FROM:  # duplicates: few differ after all
        return frozenset(itertools.chain.from_iterable(shards))
    return ShardedSet(tuple(shards))


def _exact_union(sets: list[AbstractSet[str]]) -> AbstractSet[str]:
    sharded = [s for s in sets if isinstance(s, ShardedSet)]
    if not sharded:
        joined = frozenset().union(*sets)
        return joined if len(joined) < SHARD_FROM else exact_set(joined)
    buckets: list[list[str]] = [[] for _ in range(SHARDS)]
    for small in sets:
        if not isinstance(small, ShardedSet):
            for value in small:
                buckets[hash(value) & _SHARD_MASK].append(value)
    shards = []
    for i, bucket in enumerate(buckets):
        shard = dict.fromkeys(bucket)
        for large in sharded:
            shard.update(large.shards[i])
        shards.append(shard)
    return ShardedSet(tuple(shards))


@dataclass(frozen=True, slots=True)
class NumberSet:
    exact: AbstractSet[str] = frozenset()
    """A frozenset, or a ShardedSet from SHARD_FROM numbers on (large list files)."""
    prefixes: frozenset[str] = frozenset()
    prefix_lengths: tuple[int, ...] = field(init=False)
    """The lengths of `prefixes`, ascending: a number is looked up once per length."""
    shards: tuple[Container[str], ...] = field(init=False, repr=False, compare=False)
    """Where `exact` keeps its numbers: a ShardedSet's shards, else `(exact,)`."""

    def __post_init__(self) -> None:
        lengths = tuple(sorted({len(p) for p in self.prefixes}))
        exact = self.exact
        object.__setattr__(self, "prefix_lengths", lengths)
        object.__setattr__(self, "shards", exact.shards if type(exact) is ShardedSet else (exact,))

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from `exact` (which re-splits itself: see ShardedSet.__reduce__), never
        # from `shards`, which follow this process's hash().
        return NumberSet, (self.exact, self.prefixes)

    @classmethod
    def of(cls, patterns: Iterable[str]) -> NumberSet:
        prefixes: set[str] = set()

        def exact() -> Iterator[str]:
            for pattern in patterns:
                if pattern.endswith("*"):
                    prefixes.add(pattern[:-1])
                else:
                    yield pattern

        numbers = exact_set(exact())
        return cls(numbers, frozenset(prefixes))

    def union(self, *others: NumberSet) -> NumberSet:
        if not others:
            return self  # immutable: a single list needs no copy (1M numbers: ~35 ms, ~40 MB)
        exact = _exact_union([self.exact, *(o.exact for o in others)])
        return NumberSet(exact, self.prefixes.union(*(o.prefixes for o in others)))

    def __contains__(self, number: object) -> bool:
        return isinstance(number, str) and listed(
            self.shards, self.prefixes, self.prefix_lengths, number
        )

    def __len__(self) -> int:
        return len(self.exact) + len(self.prefixes)

    def parts(self) -> tuple[object, ...]:
        """What holds its numbers: the shards of a large set. Whoever releases the last
        reference to this set can hold these and drop them one at a time instead."""
        return self.exact.shards if isinstance(self.exact, ShardedSet) else ()


@functools.lru_cache(maxsize=65536)
def number_info(e164: str) -> tuple[str | None, frozenset[str]]:
    """(ISO region, type names) of an E.164 number; cached since callers come back."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None, frozenset()
    region = phonenumbers.region_code_for_number(parsed)
    kind = phonenumbers.number_type(parsed)
    names = {name for name, value in NUMBER_TYPES.items() if value == kind}
    if "fixed_line_or_mobile" in names:
        names |= _EITHER
    return region, frozenset(names)


class ListFileError(Exception):
    def __init__(self, problems: list[tuple[int | None, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


def load_number_file(
    path: Path,
    region: str,
    *,
    column: int = 1,
    digest: Hash | None = None,
    snapshot: Snapshot | None = None,
) -> NumberSet:
    """Read a .txt (one number per line) or .csv (numbers in `column`) list.

    `digest` is fed the very bytes parsed, so a version never describes another edit.
    `snapshot` notes the file as read (FileChanged if it was written meanwhile).

    Loads run in a worker thread while the event loop serves calls, and CPython switches
    threads only between bytecodes: so no step here is one long C call over the whole
    file, which would hold the GIL throughout (a million lines: `splitlines()` ~60 ms,
    the set's last resize ~25 ms, a copy into a frozenset ~35 ms, decoding 13 MB 10-50 ms).
    The file is read, decoded and split a piece at a time (_read_text), and the numbers go
    from a generator into shards (exact_set)."""
    try:
        pieces = _read_text(path, digest, snapshot)
    except OSError as exc:
        raise ListFileError([(None, f"cannot read {path}: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ListFileError([(None, f"{path} is not UTF-8 text")]) from None
    pieces.reverse()  # taken from the end: each piece is freed once read
    prefixes: set[str] = set()
    problems: list[tuple[int | None, str]] = []
    if path.suffix.lower() == ".csv":
        numbers = _exact_numbers(_csv_rows(_taken(pieces), column), region, prefixes, problems)
    else:
        numbers = _text_numbers(_taken(pieces), region, prefixes, problems)
    exact = exact_set(numbers)
    if problems:
        raise ListFileError(problems)
    return NumberSet(exact, frozenset(prefixes))


# Characters of a piece of a list file that holds nothing but E.164 numbers.
_NOT_E164 = str.maketrans("", "", "+0123456789\n")


def _text_numbers(
    pieces: Iterable[str],
    region: str,
    prefixes: set[str],
    problems: list[tuple[int | None, str]],
) -> Iterator[str]:
    """The exact numbers of a text list's pieces (see _exact_numbers). A piece that holds
    only E.164 numbers, one a line, is taken as it is, its lines checked by C calls over
    the whole piece (~0.1 s less per million lines than a test of each line)."""
    line_no = 0
    for piece in pieces:
        lines = piece.splitlines()
        if _only_e164(piece, lines):
            yield from lines
        else:
            yield from _exact_numbers(enumerate(lines, line_no + 1), region, prefixes, problems)
            if len(problems) >= MAX_LIST_ERRORS:
                return
        line_no += len(lines)


def _only_e164(piece: str, lines: list[str]) -> bool:
    """Every line a "+" then digits, 8 to 16 characters (the fast path of _exact_numbers,
    ASCII digits only), and "\n" the only line separator."""
    return (
        bool(lines)
        and not piece.translate(_NOT_E164)
        and piece[0] == "+"
        and piece.count("+") == len(lines) == piece.count("\n+") + 1
        and min(map(len, lines)) >= 8
        and max(map(len, lines)) <= 16
    )


def _exact_numbers(
    rows: Iterable[tuple[int, str]],
    region: str,
    prefixes: set[str],
    problems: list[tuple[int | None, str]],
) -> Iterator[str]:
    """The exact numbers of a list's rows; prefixes and problems go to the given
    collections. Stops after MAX_LIST_ERRORS problems."""
    for line_no, raw in rows:
        # Fast path: already E.164 (what carriers and exports mostly hold), tested first on
        # the line as it is (no comment, no blanks: the usual case), then without them.
        if raw[:1] == "+" and 8 <= len(raw) <= 16 and raw.isascii() and raw[1:].isdigit():
            yield raw
            continue
        value = raw.partition("#")[0].strip()
        if not value:
            continue
        # isascii: str.isdigit() also holds for other scripts' digits, which the parser
        # reads as the same number in ASCII (normalise_pattern below).
        if value[0] == "+" and value.isascii() and value[1:].isdigit() and 8 <= len(value) <= 16:
            yield value
            continue
        try:
            pattern = normalise_pattern(value, region)
        except ValueError as exc:
            if line_no == 1 and not any(ch.isdigit() for ch in value):
                continue  # a CSV or text header row
            problems.append((line_no, f"line {line_no}: {exc}"))
            if len(problems) >= MAX_LIST_ERRORS:
                return
            continue
        if pattern.endswith("*"):
            prefixes.add(pattern[:-1])
        else:
            yield pattern


CHUNK_BYTES = 1 << 16
MAX_LIST_BYTES: Final = 256 << 20
"""A list file larger than this is refused (a million numbers take 13 MB): a sparse or
ever-growing file would otherwise be read until memory runs out."""


EMPTY_HINT: Final = "a list with no numbers needs a line, e.g. a # comment"


def _read_text(path: Path, digest: Hash | None, snapshot: Snapshot | None = None) -> list[str]:
    """The file as UTF-8 text (a byte order mark dropped), in pieces of about CHUNK_BYTES,
    each cut just after a "\n" (a byte that in UTF-8 is never part of another character).

    Reading and decoding a million lines in one go holds the GIL for ~10-50 ms: the time
    goes into touching 13 MB of fresh memory, slow on a VM. A "\n" ends a line for
    `str.splitlines()` (alone or in "\r\n") and for io.StringIO, so splitting each piece
    gives the very lines splitting the whole text would."""
    pieces: list[str] = []
    pending: list[bytes] = []  # the start of a line not ended yet
    checksum = 0
    with open_regular(path) as file:
        started = read_started(file)
        total = started[0].st_size
        while total <= MAX_LIST_BYTES and (block := file.read(CHUNK_BYTES)):
            total = max(total, file.tell())
            if digest is not None:
                digest.update(block)
            if snapshot is not None:
                checksum = zlib.crc32(block, checksum)
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                pending.append(block)
                continue
            pending.append(block[:cut])
            pieces.append(_decode(b"".join(pending), first=not pieces))
            pending = [block[cut:]]
        if total > MAX_LIST_BYTES:
            raise ListFileError(
                [(None, f"{path} is larger than {MAX_LIST_BYTES >> 20} MiB: not read")]
            )
        if snapshot is not None:
            snapshot.finish(path, file, started, checksum)
        if file.tell() == 0:
            # What `export > list.txt` leaves until its first line: used, it would empty
            # a blocklist for as long as the export takes.
            raise ListFileError([(None, f"{path} is empty (0 bytes): {EMPTY_HINT}")])
    tail = b"".join(pending)
    if tail:
        pieces.append(_decode(tail, first=not pieces))
    return pieces


def _decode(data: bytes, *, first: bool) -> str:
    return data.decode("utf-8-sig" if first else "utf-8")


def _taken(pieces: list[str]) -> Iterator[str]:
    """Empty `pieces` from the end, yielding each."""
    while pieces:
        yield pieces.pop()


def _csv_rows(chunks: Iterable[str], column: int) -> Iterable[tuple[int, str]]:
    # The lines io.StringIO(text) would give, without ever holding the whole text as one.
    lines = (line for chunk in chunks for line in io.StringIO(chunk))
    reader = csv.reader(lines)
    rows = enumerate(reader, start=1)
    while True:
        try:
            line_no, row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:  # a field over csv's limit (128 KiB), a NUL in strict mode
            raise ListFileError([(reader.line_num, f"line {reader.line_num}: {exc}")]) from None
        if row and not row[0].lstrip().startswith("#"):
            yield line_no, row[column - 1] if len(row) >= column else ""
