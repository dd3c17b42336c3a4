"""The ledger on SQLite and PostgreSQL: migrations, agents, idempotent intake, compare-and-set,
leases, and the hash-chained audit trail."""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from bot.domain import ChangeStatus
from bot.ledger.db import current_revision
from bot.ledger.repo import AuditEvent, IdempotencyMismatch, new_id, utcnow
from bot.ledger.tables import audit_events, changes, proposals


async def test_migrations_are_applied_and_idempotent(ledger):
    from bot.ledger.db import upgrade

    assert await current_revision(ledger.engine) == "0002"
    await upgrade(ledger.engine)  # a second replica starting finds nothing to do
    assert await current_revision(ledger.engine) == "0002"


async def test_agents_keys_are_hashed_and_revocable(ledger):
    agent, key = await ledger.create_agent("enricher")
    assert key.startswith("gk_") and len(key) > 40
    assert (await ledger.agent_by_key(key)).id == agent.id
    assert await ledger.agent_by_key(key + "x") is None
    rows = await ledger.list_agents()
    assert [a.name for a in rows] == ["enricher"]
    async with ledger.engine.connect() as conn:
        stored = (await conn.exec_driver_sql("SELECT key_hash FROM agents")).scalar_one()
    assert key not in stored and len(stored) == 64
    with pytest.raises(ValueError, match="already exists"):
        await ledger.create_agent("enricher")
    with pytest.raises(ValueError, match="agent name"):
        await ledger.create_agent("bad name; drop table")
    assert await ledger.revoke_agent("enricher")
    assert await ledger.agent_by_key(key) is None
    assert not await ledger.revoke_agent("enricher")


def _proposal(agent_id: str):
    pid = new_id("prp")
    proposal = {
        "id": pid, "agent_id": agent_id, "crm": "hubspot", "object_type": "deals", "record_id": "1",
        "reason": None, "evidence": [], "run_id": None, "callback_url": None,
    }
    rows = [{
        "id": new_id("chg"), "proposal_id": pid, "seq": 0, "kind": "field", "field": "description",
        "tier": "autonomous", "mode": "live", "status": "queued", "proposed": "x", "has_observed": False,
        "attempts": 0,
    }]
    return proposal, rows


async def _record(ledger, agent, key, fingerprint="h1"):
    proposal, rows = _proposal(agent.id)
    return await ledger.record_proposal(
        agent_id=agent.id, key=key, request_hash=fingerprint, proposal=proposal, change_rows=rows,
        events=[AuditEvent("proposal.received", "agent:a", proposal["id"])], alert_rows=[],
        status=202, body={"id": proposal["id"]},
    )


async def test_idempotency_key_replays_and_refuses_other_bodies(ledger):
    agent, _ = await ledger.create_agent("a")
    first = await _record(ledger, agent, "k1")
    again = await _record(ledger, agent, "k1")
    assert not first.replayed and again.replayed and again.body == first.body
    with pytest.raises(IdempotencyMismatch):
        await _record(ledger, agent, "k1", fingerprint="other")
    # keys are scoped per agent
    other, _ = await ledger.create_agent("b")
    assert not (await _record(ledger, other, "k1")).replayed


async def test_concurrent_replays_store_one_proposal(ledger):
    agent, _ = await ledger.create_agent("a")
    results = await asyncio.gather(*[_record(ledger, agent, "same") for _ in range(10)])
    assert len({r.body["id"] for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    async with ledger.engine.connect() as conn:
        assert (await conn.exec_driver_sql("SELECT count(*) FROM proposals")).scalar_one() == 1


async def test_transition_is_compare_and_set(ledger):
    agent, _ = await ledger.create_agent("a")
    stored = await _record(ledger, agent, "k")
    change_id = (await ledger.proposal(stored.body["id"]))["changes"][0]["id"]
    move = (change_id, ChangeStatus.QUEUED, ChangeStatus.FAILED, {"error": "x"}, AuditEvent("t", "test"))
    results = await asyncio.gather(*[ledger.transition([move]) for _ in range(5)])
    assert sum(len(r) for r in results) == 1
    events = [e for e in await ledger.audit_events() if e["kind"] == "t"]
    assert len(events) == 1


async def test_leases_never_hand_one_change_to_two_replicas(ledger):
    agent, _ = await ledger.create_agent("a")
    for i in range(30):
        await _record(ledger, agent, f"k{i}")
    claims = await asyncio.gather(
        *[ledger.claim_changes(f"replica-{n}", 7, timedelta(seconds=30)) for n in range(6)]
    )
    ids = [w.id for claim in claims for w in claim]
    assert len(ids) == len(set(ids)) == 30
    # Leased work is invisible to others until its lease is given back or runs out.
    assert await ledger.claim_changes("replica-x", 100, timedelta(seconds=30)) == []
    given_back = [w.id for w in claims[0]]
    await ledger.release(given_back, "replica-0", delay=timedelta(0))
    await ledger.release([w.id for w in claims[1]], "not-the-owner", delay=timedelta(0))
    again = await ledger.claim_changes("replica-x", 100, timedelta(seconds=30))
    assert sorted(w.id for w in again) == sorted(given_back)


async def test_audit_chain_verifies_and_detects_an_edit(ledger):
    agent, _ = await ledger.create_agent("a")
    for i in range(5):
        await _record(ledger, agent, f"k{i}")
    checked, broken = await ledger.verify_audit()
    assert broken is None and checked == 6  # agent.created + 5 proposals
    async with ledger.engine.begin() as conn:
        await conn.execute(update(audit_events).where(audit_events.c.id == 3).values(actor="someone-else"))
    checked, broken = await ledger.verify_audit()
    assert broken is not None and broken["id"] == 3 and checked == 2


async def test_committed_change_must_have_a_before_image(ledger):
    agent, _ = await ledger.create_agent("a")
    stored = await _record(ledger, agent, "k")
    change_id = (await ledger.proposal(stored.body["id"]))["changes"][0]["id"]
    with pytest.raises(Exception, match="(?i)check"):
        async with ledger.engine.begin() as conn:
            await conn.execute(update(changes).where(changes.c.id == change_id).values(status="committed"))


async def test_group_commit_keeps_each_request_its_own_answer(ledger):
    agent, _ = await ledger.create_agent("a")
    results = await asyncio.gather(
        *[_record(ledger, agent, f"k{i % 5}", fingerprint=f"h{i % 5}") for i in range(20)],
        _record(ledger, agent, "k0", fingerprint="another body"),
        return_exceptions=True,
    )
    answers = results[:20]
    assert all(not isinstance(a, Exception) for a in answers)
    for i in range(5):
        same_key = [a for n, a in enumerate(answers) if n % 5 == i]
        assert len({a.body["id"] for a in same_key}) == 1
        assert sum(not a.replayed for a in same_key) == 1
    assert isinstance(results[20], IdempotencyMismatch)
    async with ledger.engine.connect() as conn:
        assert (await conn.exec_driver_sql("SELECT count(*) FROM proposals")).scalar_one() == 5
    checked, broken = await ledger.verify_audit()
    assert broken is None and checked == 6


async def test_a_ledger_at_0001_upgrades_in_place_to_the_claim_order_index(database_url):
    """Revision 0002 adds an index on a ledger that already holds work; nothing is lost."""
    from sqlalchemy import inspect

    from bot.ledger.db import make_engine, upgrade
    from bot.ledger.repo import Ledger

    engine = make_engine(database_url)
    try:
        await upgrade(engine, "0001")
        ledger = Ledger(engine)
        agent, _ = await ledger.create_agent("before-upgrade")
        await _record(ledger, agent, "k-old")
        await upgrade(engine)
        assert await current_revision(engine) == "0002"
        async with engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: {i["name"] for i in inspect(c).get_indexes("changes")})
        assert "ix_changes_queue" in indexes
        claimed = await ledger.claim_changes("replica-1", 10, timedelta(seconds=30))
        assert [c.field for c in claimed] == ["description"]  # the queued change survived
    finally:
        await engine.dispose()


async def test_the_hot_queries_walk_an_index_rather_than_scan_the_ledger(sqlite_url):
    """Intake's idempotency lookup and the committer's claims run under the write lock for every
    batch: a scan would make them slower as the ledger grows (SQLite's query plans, read here)."""
    from bot.ledger.db import make_engine, upgrade
    from bot.ledger.repo import (
        _UNSYNCED,
        Ledger,
        _interrupted,
        _lease_query,
        _queued,
        utcnow,
    )

    engine = make_engine(sqlite_url)
    await upgrade(engine)
    now = utcnow()
    lookup = Ledger(engine)._stored_answers
    queries = {
        "idempotency lookup": lookup.statement(["agt_1"], ["k1", "k2"]),
        "claim queued": _lease_query(changes, _queued(now), (changes.c.created_at, changes.c.seq), 100),
        "claim interrupted": _lease_query(changes, _interrupted(now), (changes.c.lease_expires,), 100),
    }
    # A handful of rows at any time, looked for every second: the partial index holds only them
    # (sorting that handful is fine).
    partial = {"messages to sync": _lease_query(proposals, _UNSYNCED, (proposals.c.created_at,), 20)}
    try:
        for name, query in queries.items():
            sql = str(query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
            async with engine.connect() as conn:
                plan = " | ".join(str(row[-1]) for row in await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "USING INDEX" in plan and "SCAN" not in plan and "TEMP B-TREE" not in plan, (name, plan)
        for name, query in partial.items():
            sql = str(query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
            async with engine.connect() as conn:
                plan = " | ".join(str(row[-1]) for row in await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "ix_proposals_unsynced" in plan, (name, plan)
        # The text intake sends SQLite for the same lookup.
        async with engine.connect() as conn:
            sql = lookup.sql(["agt_1"], ["k1", "k2"])
            plan = " | ".join(str(row[-1]) for row in await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ("agt_1", "k1", "k2")))
        assert "USING INDEX" in plan and "SCAN" not in plan, plan
    finally:
        await engine.dispose()


async def test_prepared_rows_read_back_as_rows_inserted_by_sqlalchemy(ledger):
    """Intake's rows are converted for the driver before the write lock; what is stored must be
    exactly what `table.insert()` stores: defaults, JSON, SQL NULL for what a row leaves out."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from bot.ledger.prepared import PreparedInsert

    agent, _ = await ledger.create_agent("a")
    at = datetime(2026, 11, 30, 9, 15, 1, 123456, tzinfo=UTC)
    proposal, _ = _proposal(agent.id)
    proposal.update(evidence=[{"url": "https://example.com/ü", "n": 1.5}], created_at=at)
    twin = {**proposal, "id": new_id("prp")}
    change = {
        "id": new_id("chg"),
        "proposal_id": proposal["id"],
        "seq": 0,
        "kind": "field",
        "field": "amount",
        "tier": "reviewed",
        "mode": "live",
        "status": "pending_review",
        "reason": None,
        "proposed": {"nested": [1, None, "é"]},
        "has_observed": True,
        "observed": None,
        "created_at": at,
        "updated_at": at,
    }
    change_twin = {**change, "id": new_id("chg"), "proposal_id": twin["id"]}
    prepared = {t.name: PreparedInsert(t, ledger.engine.dialect) for t in (proposals, changes)}
    async with ledger.engine.begin() as conn:
        await prepared["proposals"].run(conn, [prepared["proposals"].encode(proposal)])
        await prepared["changes"].run(conn, [prepared["changes"].encode(change)])
        await conn.execute(proposals.insert(), [twin])
        await conn.execute(changes.insert(), [change_twin])
    async with ledger.engine.connect() as conn:
        stored = {r.id: dict(r._mapping) for r in await conn.execute(select(proposals))}
        stored_changes = {r.id: dict(r._mapping) for r in await conn.execute(select(changes))}
        left_out = (
            (
                await conn.execute(
                    select(changes.c.id).where(
                        changes.c.before.is_(None), changes.c.observed.is_not(None)
                    )
                )
            )
            .scalars()
            .all()
        )
    mine, theirs = stored[proposal["id"]], stored[twin["id"]]
    assert {**mine, "id": None} == {**theirs, "id": None}
    assert (
        mine["review_state"] == "none" and mine["message_version"] == 0 and mine["created_at"] == at
    )
    mine, theirs = stored_changes[change["id"]], stored_changes[change_twin["id"]]
    assert {**mine, "id": None, "proposal_id": None} == {**theirs, "id": None, "proposal_id": None}
    assert mine["proposed"] == {"nested": [1, None, "é"]} and mine["has_shown"] is False
    # `observed` was given as None (JSON null); `before` was left out (SQL NULL), as with insert().
    assert sorted(left_out) == sorted([change["id"], change_twin["id"]])
    with pytest.raises(KeyError, match="has no column"):
        prepared["changes"].encode({**change, "colour": "red"})


async def test_a_prepared_insert_that_breaks_a_constraint_raises_sqlalchemys_error(ledger):
    from sqlalchemy.exc import IntegrityError

    from bot.ledger.prepared import PreparedInsert

    agent, _ = await ledger.create_agent("a")
    proposal, _ = _proposal(agent.id)
    insert = PreparedInsert(proposals, ledger.engine.dialect)
    row = insert.encode({**proposal, "created_at": utcnow()})
    async with ledger.engine.begin() as conn:
        await insert.run(conn, [row])
    with pytest.raises(IntegrityError):
        async with ledger.engine.begin() as conn:
            await insert.run(conn, [row])
    async with ledger.engine.connect() as conn:
        assert (await conn.exec_driver_sql("SELECT count(*) FROM proposals")).scalar_one() == 1


async def test_a_prepared_audit_event_hashes_as_the_chain_defines(ledger):
    """The group commit builds each event's canonical JSON piecewise; the hash must be the one
    `event_hash` (which `verify_audit` uses) gives for the same event."""
    from datetime import UTC, datetime

    from bot.ledger.repo import GENESIS, _ts, canonical_json, event_hash

    events = [
        AuditEvent(
            "proposal.received", "agent:enricher", "prp_1", None, {"changes": 2, "run_id": None}
        ),
        AuditEvent(
            "change.classified",
            "policy",
            "prp_1",
            "chg_1",
            {"field": "x", "z": {"b": 1, "a": [1.5, "ü"]}},
        ),
        AuditEvent("agent.created", "cli", data={}),
        AuditEvent(
            'say "hi"',
            "actor\nwith a newline",
            "p",
            "c",
            {"emoji": "🙂", "big": 10**20, "neg": -0.0},
        ),
    ]
    at = datetime(2026, 12, 1, 4, 0, 0, 1, tzinfo=UTC)
    prev = GENESIS
    for event in events:
        digest = ledger.prepare_event(event).digest(prev, canonical_json(_ts(at)))
        assert digest == event_hash(prev, at, event)
        prev = digest
