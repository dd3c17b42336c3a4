"""Database engine and migrations.

SQLite (the single-process default) runs in WAL mode, and every transaction starts with
`BEGIN IMMEDIATE` so that concurrent writers queue instead of failing when a read transaction
upgrades to a write. The ledger opens its write transactions with `begin()`, which on SQLite
first queues the process's writers on an asyncio lock: SQLite's own busy wait polls in sleeps of
up to 100 ms, so a writer that found the lock taken a moment ago could sleep long after it was
free; the asyncio lock hands it over the moment the last writer commits, in arrival order.
PostgreSQL (`postgresql+asyncpg://`) is for replicas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot import jsontext

MIGRATIONS = Path(__file__).parent / "migrations"
_WRITERS: WeakKeyDictionary[Engine, asyncio.Lock] = WeakKeyDictionary()


@asynccontextmanager
async def begin(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction; on SQLite, this process's writers take turns (module docstring).
    Never nest two: on SQLite the inner one would wait for the outer one forever."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            yield conn
        return
    lock = _WRITERS.setdefault(engine.sync_engine, asyncio.Lock())
    async with lock, engine.begin() as conn:
        yield conn


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, json_serializer=jsontext.dumps
        )
        _sqlite_pragmas(engine)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        json_serializer=jsontext.dumps,
    )


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see "begin" below).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # 1 MB of page cache per connection (the default is 2 MB): the pool holds up to 15
        # connections, and the OS caches the file anyway.
        cursor.execute("PRAGMA cache_size=-1024")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        # Reads go through an autocommit view of the engine and take no lock at all.
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            # Straight to the driver: one call on its thread instead of a cursor's three (see
            # bot/ledger/prepared.py), while this transaction already holds the write lock.
            conn.connection.dbapi_connection.run_async(  # type: ignore[union-attr]
                lambda driver: driver.execute("BEGIN IMMEDIATE")
            )


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to `revision` (idempotent; safe when replicas start together)."""

    def run(sync_conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # One replica migrates; the others wait here and then find nothing to do.
            await conn.execute(text("SELECT pg_advisory_xact_lock(7201)"))
        await conn.run_sync(run)


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def read(sync_conn: Connection) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)
