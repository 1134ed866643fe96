"""Versioned schema migrations for the PostgreSQL call log.

Migrations are the SQL files in app/records/migrations, named `NNNN_what.sql`, numbered
from 1 without gaps, applied in order. `switchboard_schema_migrations` remembers which
ones a database has. All pending ones are applied in one transaction holding an advisory
lock, so that replicas starting together wait for each other instead of racing (the
second one finds the work done). A migration must leave the schema usable by the
previous release (add, never rename or drop in the same release): during a rolling update
the old replicas keep writing to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

MIGRATIONS_TABLE: Final = "switchboard_schema_migrations"
LOCK_KEY: Final = 0x5357_4243_4C4F_4701
"""pg_advisory_xact_lock key of the migrations (any constant of our own; fits an int8)."""

_SELECT_VERSIONS: Final = "SELECT version FROM switchboard_schema_migrations"
_INSERT_VERSION: Final = "INSERT INTO switchboard_schema_migrations (version, name) VALUES ($1, $2)"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The migration files are inconsistent (a packaging mistake)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class MigrationResult:
    applied: tuple[int, ...]
    """Versions this call applied (empty when the database was up to date)."""
    version: int
    """The database's version afterwards (may be newer than ours: see `newer`)."""
    newer: bool
    """The database has versions this Switchboard does not know (a newer release ran)."""


def load_migrations() -> tuple[Migration, ...]:
    folder = resources.files("app.records").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"migration file name {entry.name!r} is not NNNN_name.sql")
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return check_order(found)


def check_order(migrations: list[Migration]) -> tuple[Migration, ...]:
    ordered = sorted(migrations, key=lambda m: m.version)
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migrations must be numbered 1, 2, 3...: expected {expected:04d}, "
                f"found {migration.version:04d}_{migration.name}"
            )
    return tuple(ordered)


async def migrate(
    conn: asyncpg.Connection | PoolConnectionProxy, migrations: tuple[Migration, ...]
) -> MigrationResult:
    """Apply the pending migrations. The caller bounds the time (asyncio.timeout)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
            "version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in await conn.fetch(_SELECT_VERSIONS)}
        applied: list[int] = []
        for migration in migrations:
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                _INSERT_VERSION,
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
    known = migrations[-1].version if migrations else 0
    version = max({*done, *applied}, default=0)
    return MigrationResult(tuple(applied), version, newer=version > known)
