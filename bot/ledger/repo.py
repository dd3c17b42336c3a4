"""The ledger's repository: every read and write the engine makes to the database.

Each public method is one transaction. State changes are compare-and-set (`UPDATE ... WHERE
status = ...`) so that two replicas, or two clicks, can never both win. Every state change
appends a hash-chained audit event in the same transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import Any

import orjson
from sqlalchemy import Text, and_, bindparam, case, cast, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.domain import ChangeStatus
from bot.ledger import prepared
from bot.ledger.db import begin
from bot.ledger.tables import (
    agents,
    alerts,
    audit_events,
    callbacks,
    changes,
    drift_alarms,
    idempotency_keys,
    proposals,
    rollbacks,
    shadow_outcomes,
)

GENESIS = "0" * 64
_CHAIN_END = "SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1"  # the hash a new event follows
INTAKE_BATCH = 200  # proposals stored in one transaction at most
OPEN_REVIEW_STATES = ("pending", "unroutable")  # a reviewer can decide these
CALLBACK_OUTCOMES = frozenset({"committed", "conflict", "failed", "rejected", "expired"})
AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """Time-ordered, unguessable ids: prefix, milliseconds, randomness."""
    return f"{prefix}_{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


# One encoder for every call: `json.dumps` with options builds a new encoder each time, which
# costs more than encoding the short values of an audit event.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


_FLAT = frozenset({str, int, bool, type(None)})


def canonical_json(value: Any) -> str:
    """Keys sorted, no spaces, UTF-8 as it is: the text audit hashes and request fingerprints
    are taken of, so it must never change. A flat dict of strings, integers, booleans and nulls
    (most audit events) is written by orjson, which writes exactly this for them (a test holds
    the two equal) in a fraction of the time; anything else by the standard library."""
    if type(value) is dict and all(type(k) is str and type(v) in _FLAT for k, v in value.items()):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:  # an integer beyond 64 bits
            pass
    return _CANONICAL.encode(value)


def _canonical_str(value: str | None) -> str:
    """`canonical_json` of a string or None, without the encoder's dispatch."""
    return "null" if value is None else encode_basestring(value)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Agent:
    id: str
    name: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class AuditEvent:
    kind: str
    actor: str
    proposal_id: str | None = None
    change_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any]
    replayed: bool


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An audit event encoded before the transaction that chains it (see `prepared.py`): its
    row for the driver with `at`, `prev_hash` and `hash` still open, and the canonical JSON that
    `event_hash` would build, around the two values only the chain's end knows."""

    head: str  # {"actor":...,"at":
    middle: str  # ,"change_id":...,"data":...,"kind":...,"prev":
    tail: str  # ,"proposal_id":...}
    values: tuple[Any, ...]

    def digest(self, prev_hash: str, at_json: str) -> str:
        body = f'{self.head}{at_json}{self.middle}"{prev_hash}"{self.tail}'
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class _PendingProposal:
    """A proposal waiting for the group commit, its rows already encoded for the driver."""

    agent_id: str
    key: str
    request_hash: str
    proposal_id: str
    proposal_row: tuple[Any, ...]
    change_rows: list[tuple[Any, ...]]
    idempotency_row: tuple[Any, ...]
    alert_rows: list[tuple[Any, ...]]
    events: list[PreparedEvent]
    status: int
    body: dict[str, Any]
    future: asyncio.Future[StoredResponse]


class IdempotencyMismatch(Exception):
    """The key was used before with another request body."""


@dataclass
class ChangeWork:
    """A change the committer holds a lease on, with what it needs from its proposal."""

    id: str
    proposal_id: str
    kind: str
    field: str
    status: ChangeStatus
    crm: str
    object_type: str
    record_id: str
    agent: str
    proposed: Any
    has_observed: bool
    observed: Any
    has_shown: bool
    shown: Any
    approved: Any
    decided: bool
    before_captured: bool
    before: Any
    attempts: int
    tier: str = "autonomous"
    created_at: datetime | None = None

    @property
    def target(self) -> Any:
        """What to write: the reviewer's approved value when a reviewer decided."""
        return self.approved if self.decided else self.proposed


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def event_hash(prev_hash: str, at: datetime, row: AuditEvent) -> str:
    """The chain's definition: SHA-256 of the canonical JSON of the event with the hash before it.
    `Ledger.prepare_event` builds the same text piecewise (a test holds the two equal)."""
    body = canonical_json(
        {
            "prev": prev_hash,
            "at": _ts(at),
            "actor": row.actor,
            "kind": row.kind,
            "proposal_id": row.proposal_id,
            "change_id": row.change_id,
            "data": row.data,
        }
    )
    return hashlib.sha256(body.encode()).hexdigest()


# Review messages that no longer show what the ledger holds (a partial index holds just those).
_UNSYNCED = and_(
    proposals.c.message_version > proposals.c.message_synced,
    proposals.c.review_channel.is_not(None),
)

# Reviews to route: unrouted, or routed but never posted (a crash between the two).
_TO_ROUTE = or_(
    proposals.c.review_state == "unrouted",
    and_(
        proposals.c.review_state == "pending",
        proposals.c.review_ts.is_(None),
        proposals.c.review_channel.is_not(None),
    ),
)


def _alert_claimable(now: datetime) -> Any:
    """Alerts not sent yet, and free (not leased, or the lease ran out; a failed post's lease
    runs until its retry is due)."""
    return and_(
        alerts.c.sent_at.is_(None),
        or_(alerts.c.lease_expires.is_(None), alerts.c.lease_expires < now),
    )


def _interrupted(now: datetime) -> Any:
    """Changes caught mid-commit by a crash: committing, and their lease ran out."""
    return and_(changes.c.status == ChangeStatus.COMMITTING.value, changes.c.lease_expires < now)


def _queued(now: datetime) -> Any:
    """Queued changes that nobody holds (a deferral holds a change until its retry is due)."""
    return and_(
        changes.c.status == ChangeStatus.QUEUED.value,
        or_(changes.c.lease_expires.is_(None), changes.c.lease_expires < now),
    )


def _commit_claimable(now: datetime) -> Any:
    """Changes the committer may lease: queued and free, or caught mid-commit by a crash."""
    return or_(_queued(now), _interrupted(now))


# The stored answers for idempotency keys. The primary key is (agent_id, key): naming the
# agents lets the lookup use it instead of scanning every key ever stored.
_STORED_ANSWERS = ("agent_id", "key")


def _lease_query(table: Any, condition: Any, order_by: Sequence[Any], limit: int) -> Any:
    return select(table.c.id).where(condition).order_by(*order_by).limit(limit).with_for_update(skip_locked=True)


async def _lease(
    conn: AsyncConnection,
    table: Any,
    condition: Any,
    *,
    owner: str,
    limit: int,
    lease: timedelta,
    now: datetime,
    order_by: Sequence[Any],
    count_attempt: bool = False,
) -> list[str]:
    """Lease up to `limit` rows of `table` matching `condition` to `owner` and return the ids it
    now holds. FOR UPDATE SKIP LOCKED on PostgreSQL (SQLite's writers queue instead), and the
    condition is checked again in the UPDATE, so two replicas never hold the same row."""
    ids = [r[0] for r in await conn.execute(_lease_query(table, condition, order_by, limit))]
    if not ids:
        return []
    values: dict[str, Any] = {"lease_owner": owner, "lease_expires": now + lease}
    if count_attempt:
        values["attempts"] = table.c.attempts + 1
    await conn.execute(update(table).where(table.c.id.in_(ids), condition).values(**values))
    held = await conn.execute(select(table.c.id).where(table.c.id.in_(ids), table.c.lease_owner == owner))
    return [r[0] for r in held]


async def _pending_review(conn: AsyncConnection, proposal_id: str) -> list[str]:
    """The proposal's changes still waiting for a reviewer."""
    rows = await conn.execute(
        select(changes.c.id).where(
            changes.c.proposal_id == proposal_id, changes.c.status == ChangeStatus.PENDING_REVIEW.value
        )
    )
    return [r[0] for r in rows]


class Ledger:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._intake: list[_PendingProposal] = []
        self._writer: asyncio.Task[None] | None = None
        # Reads need no transaction: on SQLite they then never wait for the write lock.
        self.reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.dialect = engine.dialect.name
        self._insert = prepared.prepared_inserts(
            (proposals, changes, idempotency_keys, alerts, audit_events), engine.dialect
        )
        self._stored_answers = prepared.PreparedLookup(
            idempotency_keys, _STORED_ANSWERS, engine.dialect
        )
        audit_insert = self._insert[audit_events.name]
        self._audit_at = audit_insert.processor("at")
        self._audit_slots = tuple(audit_insert.position(k) for k in ("at", "prev_hash", "hash"))
        self._audit_data_slot = audit_insert.position("data")

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():
            await self._writer
        await self.engine.dispose()

    async def _claimable(self, table: Any, condition: Any) -> bool:
        """A lock-free look before a job opens a write transaction: idle polls by every job of
        every replica then never queue for the write lock (SQLite) or lock rows (PostgreSQL)."""
        async with self.reader.connect() as conn:
            return (await conn.execute(select(table.c.id).where(condition).limit(1))).first() is not None

    # --- audit ---------------------------------------------------------------------------------
    def prepare_event(self, event: AuditEvent) -> PreparedEvent:
        """Everything of an audit event that does not depend on where it lands in the chain."""
        data = canonical_json(event.data)
        values = list(
            self._insert[audit_events.name].encode(
                {
                    "actor": event.actor,
                    "kind": event.kind,
                    "proposal_id": event.proposal_id,
                    "change_id": event.change_id,
                }
            )
        )
        values[self._audit_data_slot] = data  # the JSON column's text: the hash's own encoding
        return PreparedEvent(
            head='{"actor":' + _canonical_str(event.actor) + ',"at":',
            middle=(
                ',"change_id":' + _canonical_str(event.change_id)
                + ',"data":' + data
                + ',"kind":' + _canonical_str(event.kind)
                + ',"prev":'
            ),
            tail=',"proposal_id":' + _canonical_str(event.proposal_id) + "}",
            values=tuple(values),
        )  # fmt: skip

    async def _append_audit(
        self, conn: AsyncConnection, events: Sequence[AuditEvent | PreparedEvent]
    ) -> None:
        """Chain `events` onto the trail. Always the last write of its transaction (a test checks
        it): on PostgreSQL the chain's lock is then never held while waiting for a row lock, so
        no two transactions can deadlock through it."""
        if not events:
            return
        if self.dialect == "postgresql":
            # The chain needs one writer at a time; held only until this transaction commits.
            await conn.execute(text("SELECT pg_advisory_xact_lock(7202)"))
        prev = await prepared.scalar(conn, _CHAIN_END) or GENESIS
        now = utcnow()
        at, at_json = self._audit_at(now), canonical_json(_ts(now))
        at_slot, prev_slot, hash_slot = self._audit_slots
        rows = []
        for event in events:
            ready = event if isinstance(event, PreparedEvent) else self.prepare_event(event)
            digest = ready.digest(prev, at_json)
            row = list(ready.values)
            row[at_slot], row[prev_slot], row[hash_slot] = at, prev, digest
            rows.append(tuple(row))
            prev = digest
        await self._insert[audit_events.name].run(conn, rows)

    async def audit(self, *events: AuditEvent) -> None:
        async with begin(self.engine) as conn:
            await self._append_audit(conn, events)

    async def audit_events(self, *, since: datetime | None = None) -> list[dict[str, Any]]:
        query = select(audit_events).order_by(audit_events.c.id)
        if since is not None:
            query = query.where(audit_events.c.at >= since)
        async with self.reader.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def verify_audit(self) -> tuple[int, dict[str, Any] | None]:
        """Walk the chain; return (events checked, first broken event or None)."""
        prev = GENESIS
        checked = 0
        # PostgreSQL streams through a cursor, which needs a transaction; SQLite's would lock.
        source = self.reader if self.dialect == "sqlite" else self.engine
        async with source.connect() as conn:
            result = await conn.stream(select(audit_events).order_by(audit_events.c.id))
            async for row in result:
                r = row._mapping
                event = AuditEvent(
                    r["kind"], r["actor"], r["proposal_id"], r["change_id"], r["data"]
                )
                if r["prev_hash"] != prev or event_hash(prev, r["at"], event) != r["hash"]:
                    return checked, dict(r)
                prev = r["hash"]
                checked += 1
        return checked, None

    # --- agents --------------------------------------------------------------------------------
    async def create_agent(self, name: str, *, replace: bool = False) -> tuple[Agent, str]:
        """A new agent and its key (only the key's hash is stored). With `replace`, an existing
        agent of that name gets a fresh key instead (the sandbox does this at each start)."""
        if not AGENT_NAME.match(name):
            raise ValueError(f"agent name {name!r}: use 1-100 letters, digits, '.', '_' or '-'")
        key = "gk_" + secrets.token_urlsafe(32)
        agent = Agent(new_id("agt"), name, key[:10], utcnow(), None)
        async with begin(self.engine) as conn:
            existing = await conn.scalar(select(agents.c.id).where(agents.c.name == name))
            if existing and replace:
                await conn.execute(
                    update(agents)
                    .where(agents.c.id == existing)
                    .values(key_hash=hash_key(key), key_prefix=agent.key_prefix, revoked_at=None)
                )
                await self._append_audit(
                    conn, [AuditEvent("agent.key_rotated", "system", data={"agent": name})]
                )
                return Agent(existing, name, agent.key_prefix, agent.created_at, None), key
            if existing:
                raise ValueError(f"an agent named {name!r} already exists")
            await conn.execute(
                agents.insert().values(
                    id=agent.id,
                    name=name,
                    key_hash=hash_key(key),
                    key_prefix=agent.key_prefix,
                    created_at=agent.created_at,
                )
            )
            await self._append_audit(
                conn, [AuditEvent("agent.created", "cli", data={"agent": name})]
            )
        return agent, key

    async def list_agents(self) -> list[Agent]:
        async with self.reader.connect() as conn:
            rows = await conn.execute(select(agents).order_by(agents.c.created_at))
            return [Agent(r.id, r.name, r.key_prefix, r.created_at, r.revoked_at) for r in rows]

    async def revoke_agent(self, name: str) -> bool:
        async with begin(self.engine) as conn:
            result = await conn.execute(
                update(agents)
                .where(agents.c.name == name, agents.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            if result.rowcount:
                await self._append_audit(
                    conn, [AuditEvent("agent.revoked", "cli", data={"agent": name})]
                )
            return bool(result.rowcount)

    async def agent_by_key(self, key: str) -> Agent | None:
        async with self.reader.connect() as conn:
            r = (
                await conn.execute(
                    select(agents).where(
                        agents.c.key_hash == hash_key(key), agents.c.revoked_at.is_(None)
                    )
                )
            ).first()
        return Agent(r.id, r.name, r.key_prefix, r.created_at, r.revoked_at) if r else None

    # --- intake --------------------------------------------------------------------------------
    async def _stored_response(
        self, conn: AsyncConnection, agent_id: str, key: str, request_hash: str
    ) -> StoredResponse | None:
        row = (
            await conn.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.agent_id == agent_id, idempotency_keys.c.key == key
                )
            )
        ).first()
        if row is None:
            return None
        if row.request_hash != request_hash:
            raise IdempotencyMismatch(key)
        return StoredResponse(row.response_status, row.response_body, replayed=True)

    async def replay(self, agent_id: str, key: str, request_hash: str) -> StoredResponse | None:
        async with self.reader.connect() as conn:
            return await self._stored_response(conn, agent_id, key, request_hash)

    async def record_proposal(
        self,
        *,
        agent_id: str,
        key: str,
        request_hash: str,
        proposal: dict[str, Any],
        change_rows: list[dict[str, Any]],
        events: list[AuditEvent],
        alert_rows: list[dict[str, Any]],
        status: int,
        body: dict[str, Any],
    ) -> StoredResponse:
        """Store a proposal, its changes, its idempotency key and its answer in one transaction,
        or return the answer stored earlier under the same key.

        Proposals that arrive while a write is under way are stored together in the next
        transaction (group commit): one lock, one commit and one audit append for many. The rows
        are encoded for the driver here, before the write lock (see `prepared.py`)."""
        now = utcnow()
        insert = self._insert
        pending = _PendingProposal(
            agent_id=agent_id,
            key=key,
            request_hash=request_hash,
            proposal_id=proposal["id"],
            proposal_row=insert[proposals.name].encode({**proposal, "created_at": now}),
            change_rows=[
                insert[changes.name].encode({**row, "created_at": now, "updated_at": now})
                for row in change_rows
            ],
            idempotency_row=insert[idempotency_keys.name].encode(
                {
                    "agent_id": agent_id,
                    "key": key,
                    "request_hash": request_hash,
                    "proposal_id": proposal["id"],
                    "response_status": status,
                    "response_body": body,
                    "created_at": now,
                }
            ),
            alert_rows=[
                insert[alerts.name].encode({**row, "created_at": now, "attempts": 0})
                for row in alert_rows
            ],
            events=[self.prepare_event(event) for event in events],
            status=status,
            body=body,
            future=asyncio.get_running_loop().create_future(),
        )
        self._intake.append(pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_intake(), name="ledger-intake")
        return await asyncio.shield(pending.future)

    async def _write_intake(self) -> None:
        while self._intake:
            batch, self._intake = self._intake[:INTAKE_BATCH], self._intake[INTAKE_BATCH:]
            try:
                await self._record_batch(batch)
            except DBAPIError:
                # Another replica stored one of these keys meanwhile (or a deadlock between two
                # batches was broken): one by one, so each request gets its own answer.
                for item in batch:
                    await self._settle(item, self._record_one(item))
            except Exception as exc:  # the database is down: every waiting request learns it
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    @staticmethod
    async def _settle(item: _PendingProposal, work: Awaitable[StoredResponse]) -> None:
        try:
            result = await work
        except Exception as exc:  # passed on to the request that is waiting for it
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(result)

    async def _record_batch(self, batch: list[_PendingProposal]) -> None:
        outcomes: list[StoredResponse | Exception] = []
        keys = sorted({item.key for item in batch})
        agent_ids = sorted({item.agent_id for item in batch})
        async with begin(self.engine) as conn:
            existing: dict[tuple[str, str], dict[str, Any]] = {}
            for i in range(0, len(keys), 500):
                rows = await self._stored_answers.fetch(conn, agent_ids, keys[i : i + 500])
                existing.update({(r["agent_id"], r["key"]): r for r in rows})
            first: dict[tuple[str, str], _PendingProposal] = {}
            fresh: list[_PendingProposal] = []
            for item in batch:
                ident = (item.agent_id, item.key)
                if ident in existing:
                    row = existing[ident]
                    outcomes.append(
                        IdempotencyMismatch(item.key)
                        if row["request_hash"] != item.request_hash
                        else StoredResponse(row["response_status"], row["response_body"], replayed=True)
                    )
                elif ident in first:
                    earlier = first[ident]
                    outcomes.append(
                        IdempotencyMismatch(item.key)
                        if earlier.request_hash != item.request_hash
                        else StoredResponse(earlier.status, earlier.body, replayed=True)
                    )
                else:
                    first[ident] = item
                    fresh.append(item)
                    outcomes.append(StoredResponse(item.status, item.body, replayed=False))
            if fresh:
                # In key order, so two replicas' batches never wait on each other in a cycle.
                await self._insert_proposals(conn, sorted(fresh, key=lambda i: (i.agent_id, i.key)))
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, Exception):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    async def _insert_proposals(self, conn: AsyncConnection, items: list[_PendingProposal]) -> None:
        insert = self._insert
        await insert[proposals.name].run(conn, [i.proposal_row for i in items])
        await insert[changes.name].run(conn, [row for i in items for row in i.change_rows])
        await insert[idempotency_keys.name].run(conn, [i.idempotency_row for i in items])
        await insert[alerts.name].run(conn, [row for i in items for row in i.alert_rows])
        await self._append_audit(conn, [event for i in items for event in i.events])

    async def _record_one(self, item: _PendingProposal) -> StoredResponse:
        try:
            async with begin(self.engine) as conn:
                stored = await self._stored_response(conn, item.agent_id, item.key, item.request_hash)
                if stored is not None:
                    return stored
                await self._insert_proposals(conn, [item])
        except IntegrityError:
            # A concurrent request with the same key won the race: answer what it stored.
            async with self.reader.connect() as conn:
                stored = await self._stored_response(conn, item.agent_id, item.key, item.request_hash)
            if stored is None:
                raise
            return stored
        return StoredResponse(item.status, item.body, replayed=False)

    # --- reading proposals ---------------------------------------------------------------------
    async def proposal(self, proposal_id: str) -> dict[str, Any] | None:
        async with self.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(proposals, agents.c.name.label("agent"))
                    .join(agents, agents.c.id == proposals.c.agent_id)
                    .where(proposals.c.id == proposal_id)
                )
            ).first()
            if row is None:
                return None
            rows = await conn.execute(
                select(changes).where(changes.c.proposal_id == proposal_id).order_by(changes.c.seq)
            )
            result = dict(row._mapping)
            result["changes"] = [dict(r._mapping) for r in rows]
            return result

    async def changes_by_status(self, *statuses: ChangeStatus) -> list[dict[str, Any]]:
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(changes)
                .where(changes.c.status.in_([s.value for s in statuses]))
                .order_by(changes.c.created_at)
            )
            return [dict(r._mapping) for r in rows]

    # --- the committer -------------------------------------------------------------------------
    async def changes_to_commit(self) -> bool:
        """Whether `claim_changes` would find work now (a lock-free look)."""
        return await self._claimable(changes, _commit_claimable(utcnow()))

    async def claim_changes(self, owner: str, limit: int, lease: timedelta) -> list[ChangeWork]:
        """Lease up to `limit` changes to commit: queued ones, and committing ones whose lease ran
        out (a crash mid-commit) for recovery. Safe with many replicas (SKIP LOCKED)."""
        now = utcnow()
        claimable = _commit_claimable(now)
        if not await self._claimable(changes, claimable):
            return []
        async with begin(self.engine) as conn:
            # Two leases, so each walks an index in order and stops at `limit`: one ORDER BY
            # over both statuses would sort the whole queue on every claim, and a backlog (a
            # CRM outage) would make every claim slower under the write lock.
            ids = await _lease(
                conn, changes, _interrupted(now), owner=owner, limit=limit, lease=lease, now=now,
                order_by=(changes.c.lease_expires,), count_attempt=True,
            )
            if len(ids) < limit:
                ids += await _lease(
                    conn, changes, _queued(now), owner=owner, limit=limit - len(ids), lease=lease,
                    now=now, order_by=(changes.c.created_at, changes.c.seq), count_attempt=True,
                )
            if not ids:
                return []
            rows = await conn.execute(
                select(
                    changes,
                    proposals.c.crm,
                    proposals.c.object_type,
                    proposals.c.record_id,
                    agents.c.name.label("agent"),
                )
                .join(proposals, proposals.c.id == changes.c.proposal_id)
                .join(agents, agents.c.id == proposals.c.agent_id)
                .where(changes.c.id.in_(ids), changes.c.lease_owner == owner)
                .order_by(changes.c.created_at, changes.c.seq)
            )
            return [
                ChangeWork(
                    id=r.id,
                    proposal_id=r.proposal_id,
                    kind=r.kind,
                    field=r.field,
                    status=ChangeStatus(r.status),
                    crm=r.crm,
                    object_type=r.object_type,
                    record_id=r.record_id,
                    agent=r.agent,
                    proposed=r.proposed,
                    has_observed=r.has_observed,
                    observed=r.observed,
                    has_shown=r.has_shown,
                    shown=r.shown,
                    approved=r.approved,
                    decided=r.decided_at is not None,
                    before_captured=r.before_captured,
                    before=r.before,
                    attempts=r.attempts,
                    tier=r.tier,
                    created_at=r.created_at,
                )
                for r in rows
            ]

    async def release(self, change_ids: Iterable[str], owner: str, *, delay: timedelta) -> None:
        """Give back leases without a state change; the change is claimable again after `delay`."""
        ids = list(change_ids)
        if not ids:
            return
        async with begin(self.engine) as conn:
            await conn.execute(
                update(changes)
                .where(changes.c.id.in_(ids), changes.c.lease_owner == owner)
                .values(lease_expires=utcnow() + delay)
            )

    async def transition(
        self,
        updates: Sequence[
            tuple[str, ChangeStatus, ChangeStatus, dict[str, Any], AuditEvent | None]
        ],
        *,
        owner: str | None = None,
        alert_rows: Sequence[dict[str, Any]] = (),
    ) -> list[str]:
        """Compare-and-set many changes at once: (id, from, to, values, audit event).
        Returns the ids that moved; a change no longer in `from` (or leased by someone else) is
        left alone and its event is not written."""
        moved: list[str] = []
        now = utcnow()
        # Moves of the same shape go in one statement: a batch of commits holds the write lock
        # for one round trip instead of one per change.
        groups: dict[tuple[ChangeStatus, ChangeStatus, tuple[str, ...]], list[tuple[str, dict[str, Any]]]] = {}
        for change_id, old, new, values, _event in updates:
            groups.setdefault((old, new, tuple(sorted(values))), []).append((change_id, values))
        async with begin(self.engine) as conn:
            moved_set: set[str] = set()
            for (old, new, columns), items in groups.items():
                where = [changes.c.id == bindparam("b_id"), changes.c.status == old.value]
                if owner is not None:
                    where.append(changes.c.lease_owner == owner)
                stmt = (
                    update(changes)
                    .where(*where)
                    .values(
                        status=new.value,
                        updated_at=now,
                        **{c: bindparam(f"b_{c}", type_=changes.c[c].type) for c in columns},
                    )
                )
                params = [{"b_id": cid, **{f"b_{c}": values[c] for c in columns}} for cid, values in items]
                await conn.execute(stmt, params)
                # Which of them moved: the compare-and-set left the others alone.
                ids = [cid for cid, _ in items]
                moved_set.update(
                    r[0]
                    for r in await conn.execute(
                        select(changes.c.id).where(
                            changes.c.id.in_(ids), changes.c.status == new.value, changes.c.updated_at == now
                        )
                    )
                )
            events = []
            for change_id, _old, _new, _values, event in updates:
                if change_id in moved_set:
                    moved.append(change_id)
                    if event is not None:
                        events.append(event)
            if alert_rows:
                await conn.execute(
                    alerts.insert(),
                    [{**row, "created_at": now, "attempts": 0} for row in alert_rows],
                )
            await self._after_moves(conn, moved, now)
            await self._append_audit(conn, events)
        return moved

    async def _after_moves(self, conn: AsyncConnection, change_ids: Sequence[str], now: datetime) -> None:
        """What every state change implies: the review message must show it, and a terminal
        outcome is owed to the agent's callback."""
        if not change_ids:
            return
        rows = (
            await conn.execute(
                select(
                    changes,
                    proposals.c.callback_url,
                    proposals.c.review_state,
                    proposals.c.object_type,
                    proposals.c.record_id,
                    proposals.c.reject_reason,
                ).join(proposals, proposals.c.id == changes.c.proposal_id)
                .where(changes.c.id.in_(list(change_ids)))
            )
        ).all()
        reviewed = {r.proposal_id for r in rows if r.review_state != "none"}
        if reviewed:
            await conn.execute(
                update(proposals)
                .where(proposals.c.id.in_(reviewed))
                .values(message_version=proposals.c.message_version + 1)
            )
        owed = [r for r in rows if r.callback_url and r.status in CALLBACK_OUTCOMES]
        if not owed:
            return
        existing = {
            (c, o)
            for c, o in await conn.execute(
                select(callbacks.c.change_id, callbacks.c.outcome).where(
                    callbacks.c.change_id.in_([r.id for r in owed])
                )
            )
        }
        fresh = [
            {
                "id": new_id("cbk"),
                "proposal_id": r.proposal_id,
                "change_id": r.id,
                "url": r.callback_url,
                "outcome": r.status,
                "payload": {
                    "event": "change.outcome",
                    "proposal_id": r.proposal_id,
                    "change_id": r.id,
                    "object": r.object_type,
                    "record_id": r.record_id,
                    "kind": r.kind,
                    "field": r.field,
                    "status": r.status,
                    "proposed": r.proposed,
                    "approved": r.approved if r.decided_at else None,
                    "before": r.before if r.before_captured else None,
                    "written": r.written,
                    "error": r.error,
                    "decided_by": r.decided_by,
                    "reject_reason": r.reject_reason if r.status == "rejected" else None,
                    "at": now.isoformat(),
                },
                "created_at": now,
                "next_attempt_at": now,
                "attempts": 0,
            }
            for r in owed
            if (r.id, r.status) not in existing
        ]
        if fresh:
            await conn.execute(callbacks.insert(), fresh)

    # --- alerts outbox -------------------------------------------------------------------------
    async def alerts_to_send(self) -> bool:
        """Whether `claim_alerts` would find work now (a lock-free look)."""
        return await self._claimable(alerts, _alert_claimable(utcnow()))

    async def claim_alerts(self, owner: str, limit: int, lease: timedelta) -> list[dict[str, Any]]:
        now = utcnow()
        claimable = _alert_claimable(now)
        order = (alerts.c.created_at, alerts.c.id)
        if not await self._claimable(alerts, claimable):
            return []
        async with begin(self.engine) as conn:
            ids = await _lease(
                conn, alerts, claimable, owner=owner, limit=limit, lease=lease, now=now, order_by=order, count_attempt=True
            )
            if not ids:
                return []
            rows = await conn.execute(select(alerts).where(alerts.c.id.in_(ids)).order_by(*order))
            return [dict(r._mapping) for r in rows]

    async def alerts_sent(self, ids: Sequence[str], owner: str) -> None:
        async with begin(self.engine) as conn:
            await conn.execute(
                update(alerts)
                .where(alerts.c.id.in_(list(ids)), alerts.c.lease_owner == owner)
                .values(sent_at=utcnow())
            )

    async def alerts_failed(
        self, ids: Sequence[str], owner: str, error: str, retry_in: timedelta
    ) -> None:
        async with begin(self.engine) as conn:
            await conn.execute(
                update(alerts)
                .where(alerts.c.id.in_(list(ids)), alerts.c.lease_owner == owner)
                .values(last_error=error[:2000], lease_expires=utcnow() + retry_in)
            )

    async def unsent_alerts(self) -> int:
        async with self.reader.connect() as conn:
            return int(
                await conn.scalar(select(func.count()).where(alerts.c.sent_at.is_(None))) or 0
            )

    async def ping(self) -> None:
        async with self.reader.connect() as conn:
            await conn.execute(text("SELECT 1"))

    # --- reviews -------------------------------------------------------------------------------
    async def claim_proposals(self, owner: str, condition: Any, limit: int, lease: timedelta) -> list[str]:
        """Lease proposals matching `condition` (a SQLAlchemy expression on `proposals`)."""
        now = utcnow()
        free = or_(proposals.c.lease_expires.is_(None), proposals.c.lease_expires < now)
        if not await self._claimable(proposals, and_(condition, free)):
            return []
        async with begin(self.engine) as conn:
            return await _lease(
                conn, proposals, and_(condition, free), owner=owner, limit=limit, lease=lease, now=now,
                order_by=(proposals.c.created_at,),
            )

    async def release_proposal(self, proposal_id: str, owner: str, *, delay: timedelta = timedelta(0)) -> None:
        async with begin(self.engine) as conn:
            await conn.execute(
                update(proposals)
                .where(proposals.c.id == proposal_id, proposals.c.lease_owner == owner)
                .values(lease_expires=utcnow() + delay if delay else None)
            )

    async def save_route(
        self,
        proposal_id: str,
        owner: str,
        *,
        state: str,
        shown: dict[str, Any],
        event: AuditEvent,
        alert_rows: Sequence[dict[str, Any]] = (),
        **values: Any,
    ) -> bool:
        """Record who reviews, where, and the values the reviewer is shown: before the message is
        posted, so a click that arrives the instant it appears finds its review ready. The lease
        is kept for the posting; `save_review_message` completes the route."""
        now = utcnow()
        async with begin(self.engine) as conn:
            result = await conn.execute(
                update(proposals)
                .where(
                    proposals.c.id == proposal_id,
                    proposals.c.review_state == "unrouted",
                    proposals.c.lease_owner == owner,
                )
                .values(review_state=state, **values)
            )
            if not result.rowcount:
                return False
            for change_id, value in shown.items():
                await conn.execute(
                    update(changes)
                    .where(changes.c.id == change_id, changes.c.status == ChangeStatus.PENDING_REVIEW.value)
                    .values(has_shown=True, shown=value, updated_at=now)
                )
            if alert_rows:
                await conn.execute(
                    alerts.insert(), [{**row, "created_at": now, "attempts": 0} for row in alert_rows]
                )
            await self._append_audit(conn, [event])
        return True

    async def save_review_message(self, proposal_id: str, owner: str, message_id: str, synced: int) -> None:
        async with begin(self.engine) as conn:
            await conn.execute(
                update(proposals)
                .where(proposals.c.id == proposal_id, proposals.c.review_ts.is_(None))
                .values(review_ts=message_id, message_synced=synced)
            )
            await conn.execute(
                update(proposals)
                .where(proposals.c.id == proposal_id, proposals.c.lease_owner == owner)
                .values(lease_expires=None)
            )

    async def close_review(
        self, proposal_id: str, *, from_states: Sequence[str], to_state: str, change_status: ChangeStatus,
        reason: str, event: AuditEvent, decision: str | None = None,
    ) -> bool:
        """End a review without a person's decision (expired, or the record is gone)."""
        now = utcnow()
        async with begin(self.engine) as conn:
            result = await conn.execute(
                update(proposals)
                .where(proposals.c.id == proposal_id, proposals.c.review_state.in_(list(from_states)))
                .values(
                    review_state=to_state,
                    decision=decision,
                    decided_at=now if decision else None,
                    lease_expires=None,
                    message_version=proposals.c.message_version + 1,
                )
            )
            if not result.rowcount:
                return False
            ids = await _pending_review(conn, proposal_id)
            if ids:
                await conn.execute(
                    update(changes)
                    .where(changes.c.id.in_(ids), changes.c.status == ChangeStatus.PENDING_REVIEW.value)
                    .values(status=change_status.value, error=reason, updated_at=now)
                )
            await self._after_moves(conn, ids, now)
            await self._append_audit(conn, [event])
        return True

    async def decide(
        self,
        proposal_id: str,
        *,
        actor: str,
        decision: str,
        approved: dict[str, Any],
        reject_reason: str | None,
        events: list[AuditEvent],
    ) -> bool:
        """The one decision on a review, compare-and-set: True for the first caller only.

        `approved` maps each pending change id to the value to write (approve / edit); for a
        rejection it is empty. Changes not pending review are never touched."""
        now = utcnow()
        async with begin(self.engine) as conn:
            result = await conn.execute(
                update(proposals)
                .where(proposals.c.id == proposal_id, proposals.c.review_state.in_(["pending", "unroutable"]))
                .values(
                    review_state="decided",
                    decision=decision,
                    decided_by=actor,
                    decided_at=now,
                    reject_reason=reject_reason,
                    message_version=proposals.c.message_version + 1,
                )
            )
            if not result.rowcount:
                return False
            pending = await _pending_review(conn, proposal_id)
            for change_id in pending:
                if decision == "rejected":
                    values: dict[str, Any] = {"status": ChangeStatus.REJECTED.value, "error": reject_reason}
                else:
                    values = {"status": ChangeStatus.QUEUED.value, "approved": approved.get(change_id)}
                await conn.execute(
                    update(changes)
                    .where(changes.c.id == change_id, changes.c.status == ChangeStatus.PENDING_REVIEW.value)
                    .values(decided_by=actor, decided_at=now, updated_at=now, **values)
                )
            await self._after_moves(conn, pending, now)
            await self._append_audit(conn, events)
        return True

    async def mark_reminded(self, proposal_id: str) -> bool:
        async with begin(self.engine) as conn:
            result = await conn.execute(
                update(proposals)
                .where(
                    proposals.c.id == proposal_id,
                    proposals.c.review_state == "pending",
                    proposals.c.reminded_at.is_(None),
                )
                .values(reminded_at=utcnow())
            )
            return bool(result.rowcount)

    async def mark_synced(self, proposal_id: str, version: int, owner: str) -> None:
        async with begin(self.engine) as conn:
            await conn.execute(
                update(proposals)
                .where(proposals.c.id == proposal_id, proposals.c.message_synced < version)
                .values(message_synced=version)
            )
            await conn.execute(
                update(proposals)
                .where(proposals.c.id == proposal_id, proposals.c.lease_owner == owner)
                .values(lease_expires=None)
            )

    async def _review_ids(self, condition: Any, limit: int, *, newest_first: bool = False) -> list[str]:
        order = proposals.c.created_at.desc() if newest_first else proposals.c.created_at
        async with self.reader.connect() as conn:
            return [r[0] for r in await conn.execute(select(proposals.c.id).where(condition).order_by(order).limit(limit))]

    async def reviews_to_route(self) -> bool:
        """Whether `claim_reviews_to_route` would find work now (a lock-free look)."""
        free = or_(proposals.c.lease_expires.is_(None), proposals.c.lease_expires < utcnow())
        return await self._claimable(proposals, and_(_TO_ROUTE, free))

    async def claim_reviews_to_route(self, owner: str, limit: int, lease: timedelta) -> list[str]:
        """Unrouted reviews, and routed ones whose message was never posted (a crash between
        recording the route and posting)."""
        return await self.claim_proposals(owner, _TO_ROUTE, limit, lease)

    async def claim_reviews_to_sync(self, owner: str, limit: int, lease: timedelta) -> list[str]:
        """Reviews whose message no longer shows what the ledger holds."""
        return await self.claim_proposals(owner, _UNSYNCED, limit, lease)

    async def reviews_to_expire(self, now: datetime, limit: int) -> list[str]:
        return await self._review_ids(
            and_(proposals.c.review_state.in_(["unrouted", *OPEN_REVIEW_STATES]), proposals.c.expires_at < now), limit
        )

    async def reviews_to_remind(self, now: datetime, limit: int) -> list[str]:
        return await self._review_ids(
            and_(
                proposals.c.review_state == "pending",
                proposals.c.remind_at.is_not(None),
                proposals.c.remind_at < now,
                proposals.c.reminded_at.is_(None),
            ),
            limit,
        )

    async def open_reviews(self, reviewer_id: str | None, limit: int) -> list[str]:
        """Reviews waiting for a decision: one reviewer's, or everyone's (None)."""
        condition: Any = proposals.c.review_state.in_(OPEN_REVIEW_STATES)
        if reviewer_id is not None:
            condition = and_(condition, proposals.c.reviewer_id == reviewer_id)
        return await self._review_ids(condition, limit)

    async def reviews_decided_by(self, user_id: str, limit: int) -> list[str]:
        return await self._review_ids(proposals.c.decided_by == user_id, limit, newest_first=True)

    # --- callbacks -----------------------------------------------------------------------------
    async def claim_callbacks(self, owner: str, limit: int, lease: timedelta) -> list[dict[str, Any]]:
        now = utcnow()
        due = and_(
            callbacks.c.delivered_at.is_(None),
            callbacks.c.gave_up_at.is_(None),
            callbacks.c.next_attempt_at <= now,
            or_(callbacks.c.lease_expires.is_(None), callbacks.c.lease_expires < now),
        )
        if not await self._claimable(callbacks, due):
            return []
        async with begin(self.engine) as conn:
            ids = await _lease(
                conn, callbacks, due, owner=owner, limit=limit, lease=lease, now=now,
                order_by=(callbacks.c.next_attempt_at,), count_attempt=True,
            )
            if not ids:
                return []
            rows = await conn.execute(select(callbacks).where(callbacks.c.id.in_(ids)))
            return [dict(r._mapping) for r in rows]

    async def callback_result(
        self, callback_id: str, owner: str, *, delivered: bool, status: int | None, error: str | None,
        retry_in: timedelta | None,
    ) -> None:
        now = utcnow()
        values: dict[str, Any] = {"last_status": status, "last_error": (error or None) and error[:2000], "lease_expires": None}
        if delivered:
            values["delivered_at"] = now
        elif retry_in is None:
            values["gave_up_at"] = now
        else:
            values["next_attempt_at"] = now + retry_in
        async with begin(self.engine) as conn:
            await conn.execute(
                update(callbacks).where(callbacks.c.id == callback_id, callbacks.c.lease_owner == owner).values(**values)
            )

    async def callbacks_for(self, proposal_id: str) -> list[dict[str, Any]]:
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(callbacks).where(callbacks.c.proposal_id == proposal_id).order_by(callbacks.c.created_at)
            )
            return [dict(r._mapping) for r in rows]

    # --- rollbacks -----------------------------------------------------------------------------
    async def rollback_candidates(
        self,
        *,
        change_id: str | None = None,
        proposal_id: str | None = None,
        rollback_id: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        since: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Committed changes a rollback target names that no compensation has reverted yet."""
        reverter = changes.alias("reverter")
        active = (
            select(reverter.c.id)
            .where(
                reverter.c.reverts_change_id == changes.c.id,
                reverter.c.status.in_(["queued", "committing", "committed"]),
            )
            .exists()
        )
        agent_writes = changes.c.kind.in_(["field", "activity"])
        where = [changes.c.status == "committed", ~active]
        if change_id is not None:
            where.append(changes.c.id == change_id)
        elif proposal_id is not None:
            where += [changes.c.proposal_id == proposal_id, agent_writes]
        elif rollback_id is not None:
            where += [changes.c.rollback_id == rollback_id, changes.c.kind == "compensation"]
        elif run_id is not None:
            where += [proposals.c.run_id == run_id, agent_writes]
        elif agent is not None:
            where += [agents.c.name == agent, proposals.c.created_at >= since, agent_writes]
        else:
            raise ValueError("no rollback target")
        # An activity's compensation deleted it: there is nothing to restore.
        where.append(~and_(changes.c.kind == "compensation", changes.c.activity_id.is_not(None)))
        where.append(~and_(changes.c.kind == "activity", changes.c.activity_id.is_(None)))
        query = (
            select(changes, proposals.c.object_type, proposals.c.record_id)
            .join(proposals, proposals.c.id == changes.c.proposal_id)
            .join(agents, agents.c.id == proposals.c.agent_id)
            .where(*where)
            .order_by(changes.c.created_at, changes.c.seq)
        )
        async with self.reader.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def create_rollback(
        self, rollback_id: str, *, target: str, requested_by: str, plan: list[dict[str, Any]], event: AuditEvent
    ) -> None:
        async with begin(self.engine) as conn:
            await conn.execute(
                rollbacks.insert().values(
                    id=rollback_id,
                    target=target,
                    requested_by=requested_by,
                    state="previewed",
                    include_conflicts=False,
                    plan=plan,
                    created_at=utcnow(),
                )
            )
            await self._append_audit(conn, [event])

    async def rollback(self, rollback_id: str) -> dict[str, Any] | None:
        async with self.reader.connect() as conn:
            row = (await conn.execute(select(rollbacks).where(rollbacks.c.id == rollback_id))).first()
            return dict(row._mapping) if row else None

    async def confirm_rollback(
        self,
        rollback_id: str,
        *,
        actor: str,
        include_conflicts: bool,
        items: list[dict[str, Any]],
        event: AuditEvent,
    ) -> int:
        """previewed -> confirmed, once; queue one compensation per item not yet reverted."""
        now = utcnow()
        async with begin(self.engine) as conn:
            result = await conn.execute(
                update(rollbacks)
                .where(rollbacks.c.id == rollback_id, rollbacks.c.state == "previewed")
                .values(state="confirmed", include_conflicts=include_conflicts, confirmed_at=now)
            )
            if not result.rowcount:
                return 0
            ids = [i["change_id"] for i in items]
            originals = {
                r.id: r
                for r in await conn.execute(
                    select(changes).where(changes.c.id.in_(ids)).with_for_update()
                )
            }
            reverter = changes.alias("reverter")
            already = {
                r[0]
                for r in await conn.execute(
                    select(reverter.c.reverts_change_id).where(
                        reverter.c.reverts_change_id.in_(ids),
                        reverter.c.status.in_(["queued", "committing", "committed"]),
                    )
                )
            }
            next_seq: dict[str, int] = {}
            rows, events = [], [event]
            for item in items:
                original = originals.get(item["change_id"])
                if original is None or original.status != "committed" or original.id in already:
                    continue
                pid = original.proposal_id
                if pid not in next_seq:
                    next_seq[pid] = 1 + int(
                        await conn.scalar(select(func.max(changes.c.seq)).where(changes.c.proposal_id == pid)) or 0
                    )
                is_activity = original.kind == "activity"
                target = {"delete_activity": original.activity_id} if is_activity else original.before
                # Guarded: written only while the CRM still holds what the gate wrote.
                guarded = item["verdict"] in ("revert", "unchecked") and not is_activity
                change_id = new_id("chg")
                rows.append(
                    {
                        "id": change_id,
                        "proposal_id": pid,
                        "seq": next_seq[pid],
                        "kind": "compensation",
                        "field": original.field,
                        "tier": original.tier,
                        "mode": "live",
                        "status": "queued",
                        "proposed": target,
                        "approved": target,
                        "has_observed": guarded,
                        "observed": original.written if guarded else None,
                        "reverts_change_id": original.id,
                        "rollback_id": rollback_id,
                        "activity_id": original.activity_id if is_activity else None,
                        "decided_by": actor,
                        "decided_at": now,
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                next_seq[pid] += 1
                events.append(
                    AuditEvent(
                        "change.compensation_queued",
                        actor,
                        pid,
                        change_id,
                        {"reverts": original.id, "restore": target, "forced": not guarded and not is_activity},
                    )
                )
            if rows:
                await conn.execute(changes.insert(), rows)
            await self._append_audit(conn, events)
            return len(rows)

    async def cancel_rollback(self, rollback_id: str, event: AuditEvent) -> bool:
        async with begin(self.engine) as conn:
            result = await conn.execute(
                update(rollbacks)
                .where(rollbacks.c.id == rollback_id, rollbacks.c.state == "previewed")
                .values(state="cancelled", finished_at=utcnow())
            )
            if result.rowcount:
                await self._append_audit(conn, [event])
            return bool(result.rowcount)

    async def rollback_changes(self, rollback_id: str) -> list[dict[str, Any]]:
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(changes).where(changes.c.rollback_id == rollback_id).order_by(changes.c.created_at)
            )
            return [dict(r._mapping) for r in rows]

    async def confirmed_rollbacks(self) -> list[str]:
        async with self.reader.connect() as conn:
            return [r[0] for r in await conn.execute(select(rollbacks.c.id).where(rollbacks.c.state == "confirmed"))]

    async def finish_rollback(
        self, rollback_id: str, *, summary: dict[str, Any], alert: dict[str, Any], event: AuditEvent
    ) -> bool:
        now = utcnow()
        async with begin(self.engine) as conn:
            result = await conn.execute(
                update(rollbacks)
                .where(rollbacks.c.id == rollback_id, rollbacks.c.state == "confirmed")
                .values(state="done", summary=summary, finished_at=now)
            )
            if not result.rowcount:
                return False
            await conn.execute(alerts.insert().values(**alert, created_at=now, attempts=0))
            await self._append_audit(conn, [event])
            return True

    # --- shadow mode ---------------------------------------------------------------------------
    async def claim_shadow(
        self, owner: str, phase: str, limit: int, lease: timedelta, *, older_than: datetime | None
    ) -> list[dict[str, Any]]:
        """Lease shadowed changes to capture (no current value yet) or to evaluate."""
        now = utcnow()
        free = or_(changes.c.lease_expires.is_(None), changes.c.lease_expires < now)
        where = [changes.c.status == "shadowed", changes.c.kind == "field", free]
        if phase == "capture":
            where.append(changes.c.before_captured.is_(False))
        else:
            judged = select(shadow_outcomes.c.change_id).where(shadow_outcomes.c.change_id == changes.c.id).exists()
            where += [changes.c.before_captured.is_(True), ~judged]
            if older_than is not None:
                where.append(changes.c.created_at <= older_than)
        if not await self._claimable(changes, and_(*where)):
            return []
        async with begin(self.engine) as conn:
            ids = await _lease(
                conn, changes, and_(*where), owner=owner, limit=limit, lease=lease, now=now,
                order_by=(changes.c.created_at,),
            )
            if not ids:
                return []
            rows = await conn.execute(
                select(changes, proposals.c.object_type, proposals.c.record_id)
                .join(proposals, proposals.c.id == changes.c.proposal_id)
                .where(changes.c.id.in_(ids), changes.c.lease_owner == owner)
            )
            return [dict(r._mapping) for r in rows]

    async def save_shadow_capture(self, values: dict[str, Any], owner: str) -> None:
        now = utcnow()
        async with begin(self.engine) as conn:
            for change_id, value in values.items():
                await conn.execute(
                    update(changes)
                    .where(changes.c.id == change_id, changes.c.lease_owner == owner)
                    .values(before=value, before_captured=True, lease_expires=None, updated_at=now)
                )

    async def save_shadow_outcomes(self, outcomes: list[dict[str, Any]], owner: str, event: AuditEvent) -> None:
        now = utcnow()
        async with begin(self.engine) as conn:
            for o in outcomes:
                exists = await conn.scalar(
                    select(shadow_outcomes.c.change_id).where(shadow_outcomes.c.change_id == o["change_id"])
                )
                if exists:
                    continue
                await conn.execute(
                    shadow_outcomes.insert().values(
                        change_id=o["change_id"],
                        outcome=o["outcome"],
                        human_value=o["human_value"],
                        basis=o["basis"],
                        evaluated_at=now,
                    )
                )
                await conn.execute(
                    update(changes).where(changes.c.id == o["change_id"], changes.c.lease_owner == owner).values(lease_expires=None)
                )
            await self._append_audit(conn, [event])

    async def shadow_counts(self, since: datetime) -> dict[tuple[str, str], dict[str, int]]:
        query = (
            select(proposals.c.object_type, changes.c.field, shadow_outcomes.c.outcome, func.count())
            .select_from(changes.join(proposals, proposals.c.id == changes.c.proposal_id).outerjoin(
                shadow_outcomes, shadow_outcomes.c.change_id == changes.c.id
            ))
            .where(changes.c.status == "shadowed", changes.c.kind == "field", changes.c.created_at >= since)
            .group_by(proposals.c.object_type, changes.c.field, shadow_outcomes.c.outcome)
        )
        counts: dict[tuple[str, str], dict[str, int]] = {}
        async with self.reader.connect() as conn:
            for object_type, field_name, outcome, n in await conn.execute(query):
                c = counts.setdefault(
                    (object_type, field_name), {"proposals": 0, "agreed": 0, "disagreed": 0, "unchanged": 0, "waiting": 0}
                )
                c["proposals"] += n
                c[outcome or "waiting"] += n
        return counts

    # --- live precision and drift --------------------------------------------------------------
    async def live_counts(self, since: datetime) -> dict[tuple[str, str, str], dict[str, int]]:
        """Per (object, field, tier) since `since`: reviewed decisions, autonomous commits and
        how many of those were rolled back."""
        reverter = changes.alias("reverter")
        rolled_back = (
            select(reverter.c.id)
            .where(reverter.c.reverts_change_id == changes.c.id, reverter.c.status == "committed")
            .exists()
        )
        # Counted by the database, grouped: a day of traffic is millions of rows, and fetching
        # them (JSON decoded) into the event loop every minute would stall every request.
        edited = or_(
            changes.c.approved.is_(None),
            cast(changes.c.approved, Text) != cast(changes.c.proposed, Text),
        )
        keys = (
            proposals.c.object_type,
            changes.c.field,
            changes.c.tier,
            changes.c.status,
            changes.c.decided_at.is_not(None).label("decided"),
            case((edited, 1), else_=0).label("edited"),
            case((rolled_back, 1), else_=0).label("rolled_back"),
        )
        query = (
            select(*keys, func.count().label("n"))
            .join(proposals, proposals.c.id == changes.c.proposal_id)
            .where(
                changes.c.kind.in_(["field", "activity"]),
                changes.c.mode == "live",
                changes.c.tier.in_(["reviewed", "autonomous"]),
                or_(changes.c.decided_at >= since, and_(changes.c.tier == "autonomous", changes.c.committed_at >= since)),
            )
            .group_by(*keys)
        )
        counts: dict[tuple[str, str, str], dict[str, int]] = {}
        async with self.reader.connect() as conn:
            for r in await conn.execute(query):
                c = counts.setdefault(
                    (r.object_type, r.field, r.tier),
                    {"decided": 0, "approved": 0, "edited": 0, "rejected": 0, "expired": 0, "committed": 0, "rolled_back": 0},
                )
                n = int(r.n)
                if r.tier == "reviewed":
                    if r.status == "expired":
                        c["expired"] += n
                        continue
                    if not r.decided:
                        continue
                    c["decided"] += n
                    if r.status == "rejected":
                        c["rejected"] += n
                    elif r.edited:
                        c["edited"] += n
                    else:
                        c["approved"] += n
                if r.status == "committed":
                    c["committed"] += n
                    if r.rolled_back:
                        c["rolled_back"] += n
        return counts

    async def records_changed(self, since: datetime) -> dict[str, int]:
        """Distinct records agents changed per object since `since`."""
        query = (
            select(proposals.c.object_type, func.count(func.distinct(proposals.c.record_id)))
            .join(changes, changes.c.proposal_id == proposals.c.id)
            .where(changes.c.status == "committed", changes.c.kind == "field", changes.c.committed_at >= since)
            .group_by(proposals.c.object_type)
        )
        async with self.reader.connect() as conn:
            return {o: int(n) for o, n in await conn.execute(query)}

    async def raise_alarm(self, key: str, value: Any, alert: dict[str, Any]) -> bool:
        """Raise an alarm once: True (and the alert queued) only if it was not already raised."""
        now = utcnow()
        async with begin(self.engine) as conn:
            row = (await conn.execute(select(drift_alarms).where(drift_alarms.c.key == key).with_for_update())).first()
            if row is not None and row.cleared_at is None:
                return False
            if row is None:
                await conn.execute(drift_alarms.insert().values(key=key, raised_at=now, value=value))
            else:
                await conn.execute(
                    update(drift_alarms).where(drift_alarms.c.key == key).values(raised_at=now, cleared_at=None, value=value)
                )
            await conn.execute(alerts.insert().values(**alert, created_at=now, attempts=0))
            await self._append_audit(conn, [AuditEvent("drift.alarm", "drift", data={"key": key, "value": value})])
            return True

    async def clear_alarm(self, key: str) -> None:
        async with begin(self.engine) as conn:
            await conn.execute(
                update(drift_alarms).where(drift_alarms.c.key == key, drift_alarms.c.cleared_at.is_(None)).values(cleared_at=utcnow())
            )

    async def pending_review_count(self) -> int:
        async with self.reader.connect() as conn:
            return int(
                await conn.scalar(
                    select(func.count()).select_from(proposals).where(proposals.c.review_state.in_(["unrouted", "pending", "unroutable"]))
                )
                or 0
            )

    async def recent_changes(self, object_type: str, field_name: str, statuses: Sequence[str], limit: int = 3) -> list[dict[str, Any]]:
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(changes, proposals.c.record_id)
                .join(proposals, proposals.c.id == changes.c.proposal_id)
                .where(proposals.c.object_type == object_type, changes.c.field == field_name, changes.c.status.in_(list(statuses)))
                .order_by(changes.c.updated_at.desc())
                .limit(limit)
            )
            return [dict(r._mapping) for r in rows]

    async def enqueue_alert(self, kind: str, text: str) -> None:
        async with begin(self.engine) as conn:
            await conn.execute(alerts.insert().values(id=new_id("alr"), kind=kind, text=text, created_at=utcnow(), attempts=0))
