"""The CRM request budget, kept where every replica sees it.

A token bucket per budget `name` (one per CRM connection): `tokens` refill at `rate` per second up
to `capacity`, a request takes `cost` tokens, and `used_today` counts requests against a daily
ceiling that resets at midnight UTC. `paused_until` lets a replica that was told "slow down" by
the CRM (429 / REQUEST_LIMIT_EXCEEDED) stop every replica until then.

`SqlBudgetStore.take` is one transaction on one row: `SELECT ... FOR UPDATE` on PostgreSQL (a
concurrent taker blocks until this one commits, then sees its result), and on SQLite the engine
begins every transaction with `BEGIN IMMEDIATE`, which holds the database's write lock from the
first statement. Either way two takers can never spend the same token.

The bucket's parameters are passed on every call rather than stored, so replicas configured alike
share one bucket and a changed configuration takes effect on the next call. Clocks: each replica
passes its own `now`; a `now` earlier than the row's `updated_at` (a replica whose clock lags)
refills nothing, so skew can only make the budget stricter, never looser.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Column, Date, Double, Integer, String, Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.ledger.db import begin
from bot.ledger.tables import Ts, metadata

budget_table = Table(
    "crm_budget",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("tokens", Double, nullable=False),
    Column("updated_at", Ts, nullable=False),  # the moment `tokens` was computed for
    Column("day", Date, nullable=False),  # the UTC day `used_today` counts
    Column("used_today", Integer, nullable=False),
    Column("paused_until", Ts),  # the CRM said "slow down": nobody sends before this
)


@dataclass(frozen=True)
class BudgetState:
    tokens: float
    updated_at: datetime
    day: date
    used_today: int
    paused_until: datetime | None = None


_EPSILON = 1e-9  # float error in a refill, not a fraction of a request


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("the budget needs aware datetimes")
    return moment.astimezone(UTC)


def next_utc_midnight(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), UTC)


def decide(
    state: BudgetState | None,
    *,
    rate: float,
    capacity: float,
    daily_limit: int | None,
    now: datetime,
    cost: int = 1,
) -> tuple[BudgetState, float]:
    """One take, as a pure function: the new state, and 0 (taken) or the seconds to wait.

    Nothing is taken when the answer is a wait. The order of the checks: a pause, then the daily
    ceiling (its wait runs to the next UTC midnight), then the bucket.
    """
    if rate <= 0 or capacity <= 0:
        raise ValueError("rate and capacity must be positive")
    if not 1 <= cost <= capacity:
        raise ValueError(f"cost {cost} must be between 1 and the capacity {capacity}")
    now = _utc(now)
    today = now.date()
    if state is None:
        state = BudgetState(tokens=float(capacity), updated_at=now, day=today, used_today=0)
    elapsed = max(0.0, (now - state.updated_at).total_seconds())
    tokens = min(float(capacity), state.tokens + elapsed * rate)
    # A replica whose clock is ahead may have moved `day` on already: keep its count.
    day, used = (state.day, state.used_today) if state.day >= today else (today, 0)
    current = dataclasses.replace(
        state, tokens=tokens, updated_at=max(state.updated_at, now), day=day, used_today=used
    )
    if state.paused_until is not None and now < state.paused_until:
        return current, (state.paused_until - now).total_seconds()
    if daily_limit is not None and used + cost > daily_limit:
        return current, (next_utc_midnight(day) - now).total_seconds()
    if tokens >= cost - _EPSILON:
        taken = dataclasses.replace(current, tokens=tokens - cost, used_today=used + cost)
        return taken, 0.0
    # Whole microseconds, rounded up (datetimes have no finer grain): after sleeping this long
    # the token is there, rather than a hair short of it.
    return current, math.ceil((cost - tokens) / rate * 1e6) / 1e6


def paused(state: BudgetState | None, *, until: datetime) -> BudgetState:
    """The state after the CRM asked us to wait until `until`.

    The bucket keeps at most one token and refills only from `until`: after the pause requests
    resume at the bucket's rate, not in a burst of everything that accrued meanwhile.
    """
    until = _utc(until)
    if state is None:
        return BudgetState(
            tokens=1.0, updated_at=until, day=until.date(), used_today=0, paused_until=until
        )
    return dataclasses.replace(
        state,
        tokens=min(state.tokens, 1.0),
        updated_at=max(state.updated_at, until),
        paused_until=max(state.paused_until or until, until),
    )


class MemoryBudgetStore:
    """The same budget in this process's memory: for a single replica, and for tests.

    `take` never awaits, so on one event loop it is atomic without a lock.
    """

    def __init__(self) -> None:
        self.states: dict[str, BudgetState] = {}

    async def take(
        self,
        name: str,
        *,
        rate: float,
        capacity: float,
        daily_limit: int | None,
        now: datetime,
        cost: int = 1,
    ) -> float:
        state, wait = decide(
            self.states.get(name),
            rate=rate,
            capacity=capacity,
            daily_limit=daily_limit,
            now=now,
            cost=cost,
        )
        self.states[name] = state
        return wait

    async def pause(self, name: str, *, until: datetime) -> None:
        self.states[name] = paused(self.states.get(name), until=until)

    async def state(self, name: str) -> BudgetState | None:
        return self.states.get(name)


class SqlBudgetStore:
    """The budget in the `crm_budget` table, shared by every replica on the database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Looks without a transaction: on SQLite they never wait for (or take) the write lock.
        self.reader = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def take(
        self,
        name: str,
        *,
        rate: float,
        capacity: float,
        daily_limit: int | None,
        now: datetime,
        cost: int = 1,
    ) -> float:
        # A look first, without the lock. A take that has to wait stores nothing worth keeping
        # (the refill is a function of the row and the clock), so only one that may succeed
        # opens a write transaction: a job polling a spent budget never queues for the lock.
        # The look can only be older than the row, and every later write to it (a take, a
        # pause) makes the wait longer, never shorter: when the look says wait, so would the row.
        seen = await self.state(name)
        if seen is not None:
            _, wait = decide(
                seen, rate=rate, capacity=capacity, daily_limit=daily_limit, now=now, cost=cost
            )
            if wait > 0:
                return wait
        initial = BudgetState(
            tokens=float(capacity), updated_at=_utc(now), day=_utc(now).date(), used_today=0
        )
        async with begin(self.engine) as conn:
            before = await self._locked(conn, name, initial)
            state, wait = decide(
                before, rate=rate, capacity=capacity, daily_limit=daily_limit, now=now, cost=cost
            )
            await self._save(conn, name, before, state)
        return wait

    async def pause(self, name: str, *, until: datetime) -> None:
        async with begin(self.engine) as conn:
            before = await self._locked(conn, name, paused(None, until=until))
            await self._save(conn, name, before, paused(before, until=until))

    async def state(self, name: str) -> BudgetState | None:
        async with self.reader.connect() as conn:
            row = (
                (await conn.execute(select(budget_table).where(budget_table.c.name == name)))
                .mappings()
                .first()
            )
        return _state(row) if row is not None else None

    # --- one row, locked ---------------------------------------------------------------------
    @staticmethod
    async def _locked(conn: AsyncConnection, name: str, initial: BudgetState) -> BudgetState:
        """The budget's row, locked until the transaction ends; created as `initial` if new."""
        # SQLite ignores FOR UPDATE; there BEGIN IMMEDIATE already holds the write lock.
        query = select(budget_table).where(budget_table.c.name == name).with_for_update()
        row = (await conn.execute(query)).mappings().first()
        if row is not None:
            return _state(row)
        # First use. Two replicas may both find no row: on PostgreSQL the second insert waits
        # for the first to commit, does nothing, and the second replica then locks that row.
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        created = await conn.execute(
            insert(budget_table)
            .values(name=name, **dataclasses.asdict(initial))
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(budget_table.c.name)
        )
        if created.first() is not None:
            return initial
        return _state((await conn.execute(query)).mappings().one())

    @staticmethod
    async def _save(
        conn: AsyncConnection, name: str, before: BudgetState, after: BudgetState
    ) -> None:
        if after != before:
            await conn.execute(
                update(budget_table)
                .where(budget_table.c.name == name)
                .values(**dataclasses.asdict(after))
            )


def _state(row: Any) -> BudgetState:
    return BudgetState(
        tokens=float(row["tokens"]),
        updated_at=row["updated_at"],
        day=row["day"],
        used_today=int(row["used_today"]),
        paused_until=row["paused_until"],
    )
