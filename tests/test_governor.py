"""The CRM governor: a shared request budget (in memory and in SQLite / PostgreSQL), driven through
the real adapters against the stand-ins over 127.0.0.1, and its retry rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.crm.hubspot import HubSpotCRM
from bot.crm.salesforce import SalesforceCRM
from bot.engine.governor import GovernedCRM, requests_per_call
from bot.engine.ports import Activity, CRMError, CRMErrorKind, FieldSchema, Owner, RecordState
from bot.ledger.budget import MemoryBudgetStore, SqlBudgetStore, budget_table
from bot.ledger.db import begin, make_engine

BATCH_READ = "/crm/v3/objects/deals/batch/read"
BATCH_UPDATE = "/crm/v3/objects/deals/batch/update"
SF_COLLECTIONS = "/services/data/v59.0/composite/sobjects"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def most_in_window(times: Sequence[float], window: float) -> int:
    """The most requests any window of `window` seconds holds (a sliding window)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def new_deals(standin: Any, count: int) -> list[str]:
    return [
        standin.add_record("deals", {"dealname": f"Deal {n}", "pipeline": "default"})
        for n in range(count)
    ]


class Waits:
    """Collects on_wait reports."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def __call__(self, method: str, seconds: float) -> None:
        self.seen.append((method, seconds))


class ManualClock:
    """A clock that only moves when the governor sleeps: deterministic waits, no real sleeping."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def hs(hubspot: Any) -> AsyncIterator[HubSpotCRM]:
    adapter = HubSpotCRM(hubspot.token, hubspot.url)
    yield adapter
    await adapter.close()


async def budget_engine(url: str) -> AsyncEngine:
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(budget_table.create, checkfirst=True)
    return engine


# --- the stores -------------------------------------------------------------------------------
async def test_memory_store_refills_caps_and_pauses() -> None:
    store = MemoryBudgetStore()
    kw: dict[str, Any] = {"rate": 2.0, "capacity": 3.0, "daily_limit": None}
    assert [await store.take("b", now=T0, **kw) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await store.take("b", now=T0, **kw) == pytest.approx(0.5)  # 1 token at 2/s
    assert await store.take("b", now=T0 + timedelta(seconds=0.5), **kw) == 0.0
    # A lagging replica's clock refills nothing: skew only ever makes the budget stricter.
    assert await store.take("b", now=T0, **kw) == pytest.approx(0.5)
    # Idle for an hour: the bucket holds `capacity`, not an hour's worth.
    later = T0 + timedelta(hours=1)
    assert [await store.take("b", now=later, **kw) for _ in range(4)][-1] == pytest.approx(0.5)
    # A cost of 2 waits until both tokens are there, and takes them together.
    assert await store.take("b", now=later + timedelta(seconds=0.5), cost=2, **kw) == (
        pytest.approx(0.5)
    )
    assert await store.take("b", now=later + timedelta(seconds=1), cost=2, **kw) == 0.0
    # The CRM said "wait 10 s": nobody takes before then, and the bucket refills from then.
    resume = later + timedelta(seconds=12)
    await store.pause("b", until=resume)
    assert await store.take("b", now=later + timedelta(seconds=2), **kw) == pytest.approx(10)
    assert await store.take("b", now=resume, **kw) == pytest.approx(0.5)
    # ... at its rate, not in a burst of everything that accrued during the pause.
    assert await store.take("b", now=resume + timedelta(seconds=0.5), **kw) == 0.0
    await store.pause("b", until=resume + timedelta(seconds=60))
    assert await store.take("b", now=resume + timedelta(seconds=60), **kw) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        await store.take("b", now=T0, cost=4, **kw)  # more than the bucket can ever hold


async def test_sql_store_is_one_budget_for_every_replica(database_url: str) -> None:
    engines = [await budget_engine(database_url), await budget_engine(database_url)]
    try:
        stores = [SqlBudgetStore(e) for e in engines]
        kw: dict[str, Any] = {"rate": 1.0, "capacity": 5.0, "daily_limit": 8}
        # Twenty takers on two "replicas" at the same instant: the bucket holds 5, so exactly 5
        # get a token, and every other is told to wait for the next one (1 s at 1 token/s).
        waits = await asyncio.gather(
            *(stores[i % 2].take("hubspot", now=T0, **kw) for i in range(20))
        )
        assert sorted(waits)[:6] == [0.0] * 5 + [pytest.approx(1.0)]
        assert waits.count(0.0) == 5
        state = await stores[0].state("hubspot")
        assert state is not None and state.used_today == 5 and state.tokens == pytest.approx(0)
        # 2.5 s later: 2.5 tokens, so two more now and the third in half a second.
        at = T0 + timedelta(seconds=2.5)
        assert [await stores[1].take("hubspot", now=at, **kw) for _ in range(3)] == [
            0.0,
            0.0,
            pytest.approx(0.5),
        ]
        # The daily ceiling (8): one left; then the wait runs to the next UTC midnight.
        at = T0 + timedelta(seconds=10)
        assert await stores[0].take("hubspot", now=at, **kw) == 0.0
        until_midnight = (datetime(2025, 3, 2, tzinfo=UTC) - at).total_seconds()
        assert await stores[1].take("hubspot", now=at, **kw) == pytest.approx(until_midnight)
        # A new UTC day starts a new count.
        tomorrow = datetime(2025, 3, 2, 0, 0, 1, tzinfo=UTC)
        assert await stores[1].take("hubspot", now=tomorrow, **kw) == 0.0
        state = await stores[0].state("hubspot")
        assert state is not None and state.used_today == 1
        # A pause written by one replica holds the other.
        await stores[0].pause("hubspot", until=tomorrow + timedelta(seconds=5))
        assert await stores[1].take("hubspot", now=tomorrow, **kw) == pytest.approx(5)
        # Another budget name is another bucket.
        assert await stores[1].take("salesforce", now=tomorrow, **kw) == 0.0
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_take_that_must_wait_needs_no_write_lock(database_url: str) -> None:
    """A spent budget is polled by every job of every replica: each poll that ends in "wait"
    must not queue for the write lock (SQLite) or the row's lock (PostgreSQL)."""
    engine = await budget_engine(database_url)
    try:
        store = SqlBudgetStore(engine)
        kw: dict[str, Any] = {"rate": 1.0, "capacity": 1.0, "daily_limit": None}
        assert await store.take("hubspot", now=T0, **kw) == 0.0
        held, release = asyncio.Event(), asyncio.Event()

        async def hold_the_lock() -> None:
            async with begin(engine) as conn:
                await conn.execute(
                    select(budget_table).where(budget_table.c.name == "hubspot").with_for_update()
                )
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold_the_lock())
        await held.wait()
        try:
            wait = await asyncio.wait_for(store.take("hubspot", now=T0, **kw), 5)
            assert wait == pytest.approx(1.0)
            # One that may succeed takes the lock, and so waits for the holder.
            taking = asyncio.create_task(store.take("hubspot", now=T0 + timedelta(seconds=1), **kw))
            await asyncio.sleep(0.3)
            assert not taking.done()
        finally:
            release.set()
            await holder
        assert await taking == 0.0
        state = await store.state("hubspot")
        assert state is not None and state.used_today == 2
    finally:
        await engine.dispose()


# --- the window guarantee, through the HubSpot adapter -------------------------------------------
async def test_no_window_ever_sees_more_than_the_budget(hubspot: Any, hs: HubSpotCRM) -> None:
    waits = Waits()
    governed = GovernedCRM(
        hs, MemoryBudgetStore(), name="hubspot", requests=10, per_seconds=1.0, on_wait=waits
    )
    assert governed.kind == "hubspot"
    deals = new_deals(hubspot, 4)
    started = time.monotonic()
    results = await asyncio.gather(
        *(governed.read_records("deals", [deals[n % 4]], ["dealname"]) for n in range(40))
    )
    elapsed = time.monotonic() - started
    assert all(r[deals[n % 4]].values["dealname"] == f"Deal {n % 4}" for n, r in enumerate(results))
    calls = [c.at for c in hubspot.calls if c.path == BATCH_READ]
    assert len(calls) == 40 and hubspot.rate_limited == 0
    assert most_in_window(calls, 1.0) <= 10
    # Paced, not merely lucky: burst 2, then 8 a second.
    assert elapsed >= (40 - 2) / 8 - 0.1
    assert waits.seen and {m for m, _ in waits.seen} == {"read_records"}
    assert all(0 < s <= 1 / 8 + 0.01 for _, s in waits.seen)


async def test_two_replicas_sharing_the_database_stay_within_the_budget(
    database_url: str, hubspot: Any
) -> None:
    engines = [await budget_engine(database_url), await budget_engine(database_url)]
    adapters = [HubSpotCRM(hubspot.token, hubspot.url) for _ in engines]
    waits = [Waits(), Waits()]
    replicas = [
        GovernedCRM(
            adapter,
            SqlBudgetStore(engine),
            name="hubspot",
            requests=8,
            per_seconds=1.0,
            on_wait=w,
        )
        for adapter, engine, w in zip(adapters, engines, waits, strict=True)
    ]
    try:
        deals = new_deals(hubspot, 2)
        # Each replica alone would fit its 8 calls in about a second; together they must share.
        await asyncio.gather(
            *(replicas[n % 2].read_records("deals", deals, ["dealname"]) for n in range(16))
        )
        calls = [c.at for c in hubspot.calls if c.path == BATCH_READ]
        assert len(calls) == 16 and hubspot.rate_limited == 0
        assert most_in_window(calls, 1.0) <= 8
        assert max(calls) - min(calls) >= (16 - 2) / 6 - 0.1  # one bucket: burst 2, then 6/s
        assert waits[0].seen and waits[1].seen  # both replicas were held back
        state = await SqlBudgetStore(engines[0]).state("hubspot")
        assert state is not None and state.used_today == 16
    finally:
        for adapter in adapters:
            await adapter.close()
        for engine in engines:
            await engine.dispose()


# --- rate limits the CRM enforces -------------------------------------------------------------
async def test_hubspot_429s_are_waited_out_and_every_write_lands_once(
    hubspot: Any, hs: HubSpotCRM
) -> None:
    hubspot.faults.rate_limit = 2  # the CRM is stricter than the governor's budget
    hubspot.faults.rate_window = 1.0
    waits = Waits()
    governed = GovernedCRM(
        hs, MemoryBudgetStore(), name="hubspot", requests=20, per_seconds=1.0, on_wait=waits
    )
    deals = new_deals(hubspot, 5)
    results = await asyncio.gather(
        *(governed.update_records("deals", {d: {"hs_next_step": f"call {d}"}}) for d in deals),
        governed.create_activity("deals", deals[0], Activity(kind="note", body="Called them")),
    )
    assert results[:5] == [{d: None} for d in deals]
    assert isinstance(results[5], str)
    assert hubspot.rate_limited > 0  # the CRM did refuse, and the refusals were waited out
    landed = [c for c in hubspot.calls if c.path == BATCH_UPDATE and c.status == 200]
    assert len(landed) == 5
    for d in deals:
        assert hubspot.value("deals", d, "hs_next_step") == f"call {d}"
        assert len(hubspot.history("deals", d, "hs_next_step")) == 1  # written exactly once
    notes = [a for a in hubspot.activities if a.id == results[5]]
    assert len(hubspot.activities) == 1 and len(notes) == 1
    assert any(s >= 0.5 for _, s in waits.seen)  # the Retry-After (1 s) was reported


async def test_salesforce_request_limit_exceeded_is_retried(salesforce: Any) -> None:
    salesforce.faults.rate_limit = 2
    salesforce.faults.rate_window = 1.0
    adapter = SalesforceCRM(salesforce.url, salesforce.token)
    governed = GovernedCRM(
        adapter, MemoryBudgetStore(), name="sf", requests=20, per_seconds=1.0, backoff=0.4
    )
    try:
        ids = salesforce.ids("Opportunity")[:4]
        results = await asyncio.gather(
            *(
                governed.update_records("Opportunity", {rid: {"NextStep": f"n {rid}"}})
                for rid in ids
            )
        )
        assert results == [{rid: None} for rid in ids]
        assert salesforce.rate_limited > 0
        refused = [c for c in salesforce.calls if c.path == SF_COLLECTIONS and c.status == 403]
        landed = [c for c in salesforce.calls if c.path == SF_COLLECTIONS and c.status == 200]
        assert refused and len(landed) == 4
        assert all(salesforce.value("Opportunity", rid, "NextStep") == f"n {rid}" for rid in ids)
    finally:
        await governed.close()


# --- transient failures: reads retried, writes not ---------------------------------------------
async def test_a_503_on_a_read_is_retried(hubspot: Any, hs: HubSpotCRM) -> None:
    waits = Waits()
    governed = GovernedCRM(
        hs, MemoryBudgetStore(), name="hs", requests=20, per_seconds=1.0, backoff=0.05,
        on_wait=waits,
    )  # fmt: skip
    deal = new_deals(hubspot, 1)[0]
    hubspot.faults.fail_next(
        1, 503, {"status": "error", "message": "Service Unavailable"}, path_prefix=BATCH_READ
    )
    states = await governed.read_records("deals", [deal], ["dealname"])
    assert states[deal].values == {"dealname": "Deal 0"}
    assert [c.status for c in hubspot.calls if c.path == BATCH_READ] == [503, 200]
    assert len(waits.seen) == 1 and waits.seen[0][0] == "read_records"
    assert 0.025 <= waits.seen[0][1] <= 0.05  # the backoff, with its jitter


async def test_a_503_on_a_write_is_raised_not_retried(hubspot: Any, hs: HubSpotCRM) -> None:
    governed = GovernedCRM(hs, MemoryBudgetStore(), name="hs", requests=20, per_seconds=1.0)
    deal = new_deals(hubspot, 1)[0]
    unavailable = {"status": "error", "message": "Service Unavailable"}
    hubspot.faults.fail_next(1, 503, unavailable, path_prefix=BATCH_UPDATE)
    with pytest.raises(CRMError) as raised:
        await governed.update_records("deals", {deal: {"hs_next_step": "x"}})
    assert raised.value.kind is CRMErrorKind.TRANSIENT
    assert hubspot.count(BATCH_UPDATE, "POST") == 1  # one write request, not resent
    assert hubspot.value("deals", deal, "hs_next_step") is None

    hubspot.faults.fail_next(1, 502, unavailable, path_prefix="/crm/v3/objects/notes")
    with pytest.raises(CRMError) as raised:
        await governed.create_activity("deals", deal, Activity(kind="note", body="hello"))
    assert raised.value.kind is CRMErrorKind.TRANSIENT
    assert hubspot.count("/crm/v3/objects/notes", "POST") == 1 and hubspot.activities == []


async def test_batches_are_cut_into_chunks_each_paid_and_answered_alone(
    hubspot: Any, hs: HubSpotCRM
) -> None:
    governed = GovernedCRM(
        hs, MemoryBudgetStore(), name="hs", requests=20, per_seconds=1.0, chunk_size=2,
        max_concurrency=1,
    )  # fmt: skip
    deals = new_deals(hubspot, 4)
    states = await governed.read_records("deals", deals + deals[:1], ["dealname"])
    assert sorted(states) == sorted(deals) and hubspot.count(BATCH_READ) == 2
    # The first chunk's request gets a 503: its records' outcome is unknown, and stays so; the
    # other chunk's records are written and reported, so the call does not raise.
    hubspot.faults.fail_next(1, 503, {"message": "down"}, path_prefix=BATCH_UPDATE)
    result = await governed.update_records("deals", {d: {"hs_next_step": "s"} for d in deals})
    kinds = {d: e.kind if e else None for d, e in result.items()}
    assert kinds == {
        deals[0]: CRMErrorKind.TRANSIENT,
        deals[1]: CRMErrorKind.TRANSIENT,
        deals[2]: None,
        deals[3]: None,
    }
    assert hubspot.count(BATCH_UPDATE, "POST") == 2
    assert [hubspot.value("deals", d, "hs_next_step") for d in deals] == [None, None, "s", "s"]


# --- the daily ceiling -------------------------------------------------------------------------
async def test_the_daily_ceiling_stops_calls_and_reports_the_wait(
    hubspot: Any, hs: HubSpotCRM
) -> None:
    clock = ManualClock(datetime(2025, 3, 1, 23, 59, 0, tzinfo=UTC))
    waits = Waits()
    governed = GovernedCRM(
        hs,
        MemoryBudgetStore(),
        name="hs",
        requests=5,
        per_seconds=1.0,  # burst 2, then 3 a second
        daily_limit=6,
        daily_share=0.5,  # this gate may use half the CRM's daily allowance: 3
        on_wait=waits,
        sleep=clock.sleep,
        clock=clock,
    )
    deal = new_deals(hubspot, 1)[0]
    for _ in range(3):
        await governed.read_records("deals", [deal], ["dealname"])
    # The third waited for a token.
    assert waits.seen == [("read_records", pytest.approx(1 / 3, abs=1e-5))]
    with pytest.raises(CRMError) as raised:
        await governed.read_records("deals", [deal], ["dealname"])
    assert raised.value.kind is CRMErrorKind.RATE_LIMITED
    assert raised.value.retry_after == pytest.approx(60 - 1 / 3, abs=1e-5)  # until midnight UTC
    assert hubspot.count(BATCH_READ) == 3  # the fourth never reached the CRM
    clock.now = datetime(2025, 3, 2, 0, 0, 1, tzinfo=UTC)  # a new day
    await governed.read_records("deals", [deal], ["dealname"])
    assert hubspot.count(BATCH_READ) == 4


# --- the rules, on a scripted CRM ----------------------------------------------------------------
class ScriptedCRM:
    """Answers update_records from a script and records what it was sent."""

    kind = "scripted"

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.sent: list[dict[str, Any]] = []

    async def update_records(
        self, object_type: str, updates: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, CRMError | None]:
        self.sent.append(dict(updates))
        answer = self.answers.pop(0)
        if isinstance(answer, CRMError):
            raise answer
        assert isinstance(answer, dict)
        return answer

    async def read_records(
        self, object_type: str, record_ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, RecordState]:
        raise NotImplementedError

    async def owners(self, owner_ids: Sequence[str]) -> dict[str, Owner]:
        raise NotImplementedError

    async def create_activity(self, object_type: str, record_id: str, activity: Activity) -> str:
        raise NotImplementedError

    async def delete_activity(self, kind: str, activity_id: str) -> None:
        raise NotImplementedError

    async def describe(self, object_type: str) -> dict[str, FieldSchema]:
        raise NotImplementedError

    def record_url(self, object_type: str, record_id: str) -> str:
        return f"https://crm.example/{object_type}/{record_id}"

    async def close(self) -> None:
        pass


def limited(retry_after: float | None = 0.01) -> CRMError:
    return CRMError(CRMErrorKind.RATE_LIMITED, "slow down", status=429, retry_after=retry_after)


async def test_only_rate_limited_records_are_resent() -> None:
    refused = CRMError(CRMErrorKind.VALIDATION, "bad value", status=400)
    unknown = CRMError(CRMErrorKind.TRANSIENT, "no report", status=207)
    inner = ScriptedCRM([{"a": None, "b": limited(), "c": refused, "d": unknown}, {"b": None}])
    governed = GovernedCRM(inner, MemoryBudgetStore(), name="s", requests=20, per_seconds=1.0)
    updates = {r: {"f": r} for r in "abcd"}
    result = await governed.update_records("deals", updates)
    assert result == {"a": None, "b": None, "c": refused, "d": unknown}
    assert inner.sent == [updates, {"b": {"f": "b"}}]  # the 207's unknown record is not resent
    assert governed.record_url("deals", "a") == "https://crm.example/deals/a"


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    last = limited(None)
    inner = ScriptedCRM([limited(None), limited(None), last])
    waits = Waits()
    governed = GovernedCRM(
        inner, MemoryBudgetStore(), name="s", requests=20, per_seconds=1.0, max_attempts=3,
        backoff=0.02, on_wait=waits,
    )  # fmt: skip
    with pytest.raises(CRMError) as raised:
        await governed.update_records("deals", {"a": {"f": 1}})
    assert raised.value is last and len(inner.sent) == 3
    # No Retry-After: backoff doubling, with jitter (half to all of 0.02, then of 0.04); after a
    # pause the bucket refills from empty, so a token wait (1/18 s) may follow a pause.
    assert {m for m, _ in waits.seen} == {"update_records"}
    # A timer may fire a fraction of a millisecond early (uvloop's count whole milliseconds): the
    # governor then waits out the remainder rather than send early. Those remainders aside:
    first, second, *tokens = (s for _, s in waits.seen if s >= 1e-3)
    assert 0.01 - 1e-3 <= first <= 0.02 and 0.02 - 1e-3 <= second <= 0.04
    assert all(s <= 1 / 18 + 1e-6 for s in tokens)


async def test_a_long_wait_is_reported_not_slept() -> None:
    inner = ScriptedCRM([limited(retry_after=120.0)])
    clock = ManualClock(T0)
    governed = GovernedCRM(
        inner, MemoryBudgetStore(), name="s", requests=20, per_seconds=1.0, max_wait=30.0,
        sleep=clock.sleep, clock=clock,
    )  # fmt: skip
    with pytest.raises(CRMError) as raised:
        await governed.update_records("deals", {"a": {"f": 1}})
    assert raised.value.kind is CRMErrorKind.RATE_LIMITED
    assert raised.value.retry_after == pytest.approx(120.0)
    assert clock.slept == [] and len(inner.sent) == 1


def test_known_multi_request_calls_cost_what_they_send() -> None:
    assert requests_per_call("hubspot", "delete_activity", "notes") == 2
    assert requests_per_call("hubspot", "describe", "deals") == 2
    assert requests_per_call("hubspot", "describe", "contacts") == 1
    assert requests_per_call("hubspot", "owners", "", 3) == 3
    assert requests_per_call("salesforce", "owners", "", 3) == 1
    assert requests_per_call("salesforce", "delete_activity", "task") == 1


# --- pacing a job ----------------------------------------------------------------------------------
async def _queue_descriptions(ledger: Any, agent_id: str, record_ids: Sequence[str], text: str) -> None:
    """Queue one autonomous `description` change per record, as intake stores them."""
    from bot.ledger.repo import AuditEvent, new_id

    for record_id in record_ids:
        pid = new_id("prp")
        await ledger.record_proposal(
            agent_id=agent_id, key=new_id("key"), request_hash=pid,
            proposal={
                "id": pid, "agent_id": agent_id, "crm": "hubspot", "object_type": "deals",
                "record_id": record_id, "reason": None, "evidence": [], "run_id": None,
                "callback_url": None,
            },
            change_rows=[{
                "id": new_id("chg"), "proposal_id": pid, "seq": 0, "kind": "field",
                "field": "description", "tier": "autonomous", "mode": "live", "status": "queued",
                "proposed": text, "has_observed": False, "attempts": 0,
            }],
            events=[AuditEvent("proposal.received", "agent:a", pid)], alert_rows=[],
            status=202, body={"id": pid},
        )  # fmt: skip


async def test_a_paced_committer_waits_for_its_share_and_the_wait_grows_the_batch(
    ledger: Any, hubspot: Any, hs: HubSpotCRM
) -> None:
    from bot.engine.committer import Committer

    agent, _ = await ledger.create_agent("enricher")
    deals = new_deals(hubspot, 15)
    arrivals: list[list[str]] = [deals[10:]]  # what agents propose while the committer waits

    class ArrivingClock(ManualClock):
        async def sleep(self, seconds: float) -> None:
            await super().sleep(seconds)
            if arrivals:
                await _queue_descriptions(ledger, agent.id, arrivals.pop(), "while waiting")

    clock = ArrivingClock(T0)
    governed = GovernedCRM(
        hs, MemoryBudgetStore(), name="hubspot", requests=100, per_seconds=10.0,
        sleep=clock.sleep, clock=clock,
    )  # fmt: skip
    committer = Committer(ledger, governed, owner="replica-1")
    committer.pace = governed.pace("commit", 0.2, cost=2.0)
    # 0.2 of the governor's (100 - 10) / 10 s: 1.8 requests/s, a pass of 2 every 1.11 s.
    assert committer.pace.interval == pytest.approx(2 / 1.8)

    # After a quiet spell a pass goes at once.
    await _queue_descriptions(ledger, agent.id, deals[:5], "first")
    assert await committer.paced_pass() == 5
    assert clock.slept == [] and governed.spent["commit"] == 2
    assert hubspot.count(BATCH_READ) == 1 and hubspot.count(BATCH_UPDATE) == 1

    # The next one waits its interval; changes proposed meanwhile ride in the same pass, one
    # read and one write for all ten.
    await _queue_descriptions(ledger, agent.id, deals[5:10], "second")
    assert await committer.paced_pass() == 10
    assert clock.slept == [pytest.approx(2 / 1.8, abs=1e-5)]
    assert hubspot.count(BATCH_READ) == 2 and hubspot.count(BATCH_UPDATE) == 2
    assert governed.spent["commit"] == 4
    assert {hubspot.value("deals", d, "description") for d in deals} == {"first", "second", "while waiting"}

    # Nothing queued: no pass, no spending, no waiting.
    assert await committer.paced_pass() == 0
    assert governed.spent["commit"] == 4 and len(clock.slept) == 1


async def test_passes_are_spaced_by_what_they_have_cost_lately(hs: HubSpotCRM, hubspot: Any) -> None:
    clock = ManualClock(T0)
    governed = GovernedCRM(
        hs, MemoryBudgetStore(), name="hubspot", requests=100, per_seconds=10.0,
        sleep=clock.sleep, clock=clock,
    )  # fmt: skip
    pace = governed.pace("routing", 0.1, cost=1.0)  # 0.9 requests/s
    deals = new_deals(hubspot, 2)
    await pace.start()
    async with pace.spending():  # four requests where one was expected
        for _ in range(3):
            await governed.read_records("deals", deals, ["dealname"])
        await governed.describe("contacts")  # the same lane across calls
    assert governed.spent == {"routing": 4} and clock.slept == []
    assert pace.cost == pytest.approx(1.0 + 0.2 * (4 - 1))  # the moving average moved towards 4
    assert await pace.ready_in() == pytest.approx(1.6 / 0.9, abs=1e-5)  # the next pass, later

    async with pace.spending():  # a pass that sent nothing teaches nothing
        pass
    assert pace.cost == pytest.approx(1.6)
    # Calls outside a pass are not counted for any lane.
    await governed.read_records("deals", deals, ["dealname"])
    assert governed.spent == {"routing": 4}
