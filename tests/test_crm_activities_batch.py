"""`create_activities`: many notes and tasks in few requests, through the real client libraries
(hubspot-api-client, simple-salesforce) against the stand-ins over 127.0.0.1, and through the
governor and the metrics wrapper."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from bot.crm.hubspot import HubSpotCRM
from bot.crm.salesforce import SalesforceCRM
from bot.engine.governor import GovernedCRM
from bot.engine.ports import Activity, CRMError, CRMErrorKind
from bot.ledger.budget import MemoryBudgetStore
from bot.metrics import InstrumentedCRM, Metrics
from bot.sandbox.hubspot import HubSpotStandIn
from bot.sandbox.salesforce import SalesforceStandIn, normalize_id

HS_TOKEN = "pat-na1-activities-sandbox-secret"
SF_TOKEN = "sandbox-salesforce-token"
NOTES_CREATE = "/crm/v3/objects/notes/batch/create"
TASKS_CREATE = "/crm/v3/objects/tasks/batch/create"
SF_COLLECTIONS = "/services/data/v59.0/composite/sobjects"
MISSING_DEAL = "31337"
MISSING_OPP = "006Hs0000009999"


@pytest.fixture
async def hs_standin() -> AsyncIterator[HubSpotStandIn]:
    server = HubSpotStandIn(HS_TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def hs(hs_standin: HubSpotStandIn) -> AsyncIterator[HubSpotCRM]:
    adapter = HubSpotCRM(HS_TOKEN, hs_standin.url)
    yield adapter
    await adapter.close()


@pytest.fixture
async def sf_standin() -> AsyncIterator[SalesforceStandIn]:
    server = SalesforceStandIn(SF_TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sf(sf_standin: SalesforceStandIn) -> AsyncIterator[SalesforceCRM]:
    adapter = SalesforceCRM(sf_standin.url, SF_TOKEN)
    yield adapter
    await adapter.close()


def hubspot_items(deals: list[str], notes: int, tasks: int) -> list[tuple[str, Activity]]:
    """Notes and tasks interleaved, each with a body no other item has."""
    items: list[tuple[str, Activity]] = []
    for n in range(max(notes, tasks)):
        if n < notes:
            items.append((deals[n % len(deals)], Activity("note", f"note #{n}")))
        if n < tasks:
            items.append((deals[n % len(deals)], Activity("task", f"task #{n}", subject=f"T{n}")))
    return items


def assert_hubspot_created(
    standin: HubSpotStandIn, items: list[tuple[str, Activity]], results: list[Any]
) -> None:
    """Every id names an object of the right kind, on the right deal, with the right body."""
    for (deal, activity), result in zip(items, results, strict=True):
        assert isinstance(result, str), (deal, activity, result)
        kind = "notes" if activity.kind == "note" else "tasks"
        obj = standin.objects[kind][result]
        body = "hs_note_body" if kind == "notes" else "hs_task_body"
        assert obj.properties[body] == activity.body
        assert obj.associations == [("deals", deal, 214 if kind == "notes" else 216)]


# --- HubSpot ----------------------------------------------------------------------------------
async def test_hubspot_150_notes_and_30_tasks_take_three_requests(
    hs: HubSpotCRM, hs_standin: HubSpotStandIn
) -> None:
    deals = [hs_standin.add_record("deals", {"dealname": f"D{n}"}) for n in range(7)]
    items = hubspot_items(deals, notes=150, tasks=30)

    results = await hs.create_activities("deals", items)

    assert hs_standin.count(NOTES_CREATE, "POST") == 2
    assert hs_standin.count(TASKS_CREATE, "POST") == 1
    assert hs_standin.count("/crm/v3/objects/notes", "POST") == 2  # no single creates
    assert len(set(results)) == 180
    assert len(hs_standin.objects["notes"]) == 150 and len(hs_standin.objects["tasks"]) == 30
    # The stand-in shuffles batch results (HubSpot promises no order): ids still line up.
    assert_hubspot_created(hs_standin, items, results)


async def test_hubspot_item_on_missing_record_fails_alone(
    hs: HubSpotCRM, hs_standin: HubSpotStandIn
) -> None:
    items = hubspot_items(["9001", "9002"], notes=10, tasks=0)
    items[4] = (MISSING_DEAL, Activity("note", "on nothing"))

    results = await hs.create_activities("deals", items)

    failed = results[4]
    assert isinstance(failed, CRMError)
    assert failed.kind is CRMErrorKind.NOT_FOUND
    assert f"deals {MISSING_DEAL} does not exist" in failed.message  # HubSpot's own words
    assert hs_standin.count(NOTES_CREATE, "POST") == 1  # a 207, answered in one request
    rest = [(i, r) for n, (i, r) in enumerate(zip(items, results, strict=True)) if n != 4]
    assert_hubspot_created(hs_standin, [i for i, _ in rest], [r for _, r in rest])
    assert len(hs_standin.objects["notes"]) == 9


async def test_hubspot_invalid_value_is_isolated_by_splitting_the_batch(
    hs: HubSpotCRM, hs_standin: HubSpotStandIn
) -> None:
    items = hubspot_items(["9001", "9003"], notes=3, tasks=8)
    bad = next(n for n, (_, a) in enumerate(items) if a.kind == "task" and a.body == "task #5")
    items[bad] = ("9001", Activity("task", "chase", subject="Chase", due="next tuesday"))

    results = await hs.create_activities("deals", items)

    failed = results[bad]
    assert isinstance(failed, CRMError) and failed.kind is CRMErrorKind.VALIDATION
    assert "next tuesday is not a valid datetime" in failed.message
    # The whole-batch 400 was split until the bad task stood alone; nothing was created twice.
    assert hs_standin.count(TASKS_CREATE, "POST") > 1
    assert len(hs_standin.objects["tasks"]) == 7 and len(hs_standin.objects["notes"]) == 3
    good = [n for n in range(len(items)) if n != bad]
    assert_hubspot_created(hs_standin, [items[n] for n in good], [results[n] for n in good])


async def test_hubspot_bad_token_fails_the_call_as_a_whole(hs_standin: HubSpotStandIn) -> None:
    adapter = HubSpotCRM("pat-na1-wrong", hs_standin.url)
    try:
        with pytest.raises(CRMError) as caught:
            await adapter.create_activities("deals", hubspot_items(["9001"], 3, 2))
    finally:
        await adapter.close()
    assert caught.value.kind is CRMErrorKind.UNAUTHORIZED
    assert hs_standin.activities == []


async def test_hubspot_unassociable_type_is_refused_per_item_without_a_request(
    hs: HubSpotCRM, hs_standin: HubSpotStandIn
) -> None:
    items = [("9001", Activity("note", "fine")), ("9001", Activity("meeting", "no such kind"))]
    results = await hs.create_activities("deals", items)
    assert isinstance(results[0], str)
    assert hs_standin.objects["notes"][results[0]].properties["hs_note_body"] == "fine"
    assert isinstance(results[1], CRMError) and results[1].kind is CRMErrorKind.VALIDATION
    assert hs_standin.count("/crm/v3/objects/meeting") == 0


async def test_single_create_activity_still_works(
    hs: HubSpotCRM, hs_standin: HubSpotStandIn
) -> None:
    note_id = await hs.create_activity("deals", "9001", Activity("note", "just one"))
    assert hs_standin.objects["notes"][note_id].associations == [("deals", "9001", 214)]
    assert hs_standin.count(NOTES_CREATE) == 0


async def test_hubspot_standin_batch_create_limits_and_trace_ids(
    hs_standin: HubSpotStandIn,
) -> None:
    stamp = "2026-01-05T09:30:00.000Z"

    def note(deal: str, trace: str) -> dict[str, Any]:
        return {
            "properties": {"hs_note_body": trace, "hs_timestamp": stamp},
            "associations": [
                {
                    "to": {"id": deal},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214}],
                }
            ],
            "objectWriteTraceId": trace,
        }

    headers = {"Authorization": f"Bearer {HS_TOKEN}"}
    async with aiohttp.ClientSession(hs_standin.url, headers=headers) as http:
        too_many = await http.post(
            NOTES_CREATE, json={"inputs": [note("9001", f"t{n}") for n in range(101)]}
        )
        assert too_many.status == 400
        assert "maximum batch size is 100" in (await too_many.json())["message"]

        ok = await http.post(NOTES_CREATE, json={"inputs": [note("9001", "a"), note("9002", "b")]})
        assert ok.status == 201
        body = await ok.json()
        assert {r["objectWriteTraceId"] for r in body["results"]} == {"a", "b"}

        partial = await http.post(
            NOTES_CREATE, json={"inputs": [note("9001", "c"), note(MISSING_DEAL, "d")]}
        )
        assert partial.status == 207
        body = await partial.json()
        assert [r["objectWriteTraceId"] for r in body["results"]] == ["c"]
        (error,) = body["errors"]
        assert error["context"]["objectWriteTraceId"] == ["d"]
        assert error["subCategory"] == "crm.associations.INVALID_OBJECT_IDS"

        no_stamp = note("9001", "e")
        del no_stamp["properties"]["hs_timestamp"]
        refused = await http.post(NOTES_CREATE, json={"inputs": [note("9001", "f"), no_stamp]})
        assert refused.status == 400
        assert "hs_timestamp is required" in (await refused.json())["message"]
    # a, b, c: the refused batch created nothing.
    assert sorted(o.properties["hs_note_body"] or "" for o in hs_standin.activities) == [
        "a",
        "b",
        "c",
    ]


# --- Salesforce -------------------------------------------------------------------------------
async def test_salesforce_250_mixed_activities_take_two_requests(
    sf: SalesforceCRM, sf_standin: SalesforceStandIn
) -> None:
    opps = sf_standin.ids("Opportunity")
    items: list[tuple[str, Activity]] = [
        (opps[n % len(opps)], Activity("task" if n % 3 else "note", f"activity #{n}"))
        for n in range(250)
    ]
    items[137] = (MISSING_OPP, Activity("task", "on nothing"))

    results = await sf.create_activities("Opportunity", items)

    assert sf_standin.count(SF_COLLECTIONS, "POST") == 2
    failed = results[137]
    assert isinstance(failed, CRMError) and failed.kind is CRMErrorKind.NOT_FOUND
    assert "invalid cross reference id" in failed.message
    for n, ((opp, activity), result) in enumerate(zip(items, results, strict=True)):
        if n == 137:
            continue
        assert isinstance(result, str), (n, result)
        if activity.kind == "task":
            record = sf_standin.record("Task", result)
            assert (record["WhatId"], record["Description"]) == (normalize_id(opp), activity.body)
        else:
            record = sf_standin.record("Note", result)
            assert (record["ParentId"], record["Body"]) == (normalize_id(opp), activity.body)
    assert len(sf_standin.activities()) == 249


async def test_salesforce_malformed_id_is_refused_before_sending(
    sf: SalesforceCRM, sf_standin: SalesforceStandIn
) -> None:
    opp = sf_standin.ids("Opportunity")[0]
    results = await sf.create_activities(
        "Opportunity", [("not an id!", Activity("note", "x")), (opp, Activity("note", "y"))]
    )
    assert isinstance(results[0], CRMError) and results[0].kind is CRMErrorKind.NOT_FOUND
    assert isinstance(results[1], str)
    assert sf_standin.record("Note", results[1])["Body"] == "y"
    assert sf_standin.count(SF_COLLECTIONS, "POST") == 1


async def test_salesforce_standin_collection_create_all_or_none(
    sf_standin: SalesforceStandIn,
) -> None:
    opp = sf_standin.ids("Opportunity")[0]
    records = [
        {"attributes": {"type": "Note"}, "ParentId": opp, "Title": "ok", "Body": "kept?"},
        {"attributes": {"type": "Task"}, "WhatId": MISSING_OPP, "Subject": "s"},
    ]
    headers = {"Authorization": f"Bearer {SF_TOKEN}"}
    async with aiohttp.ClientSession(sf_standin.url, headers=headers) as http:
        resp = await http.post(SF_COLLECTIONS, json={"allOrNone": True, "records": records})
        assert resp.status == 200
        results = await resp.json()
        too_many = await http.post(
            SF_COLLECTIONS, json={"allOrNone": False, "records": [records[0]] * 201}
        )
        assert too_many.status == 400
    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "INVALID_CROSS_REFERENCE_KEY"
    assert sf_standin.activities() == []


# --- the governor and the metrics wrapper -----------------------------------------------------
class ManualClock:
    """A clock that moves only when the governor sleeps."""

    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


async def test_governed_batch_create_waits_out_a_429_and_creates_each_once(
    hs: HubSpotCRM, hs_standin: HubSpotStandIn
) -> None:
    clock = ManualClock()
    governed = GovernedCRM(
        hs,
        MemoryBudgetStore(),
        name="hubspot",
        requests=100,
        per_seconds=10.0,
        sleep=clock.sleep,
        clock=clock,
    )
    hs_standin.faults.fail_next(
        1,
        429,
        {"status": "error", "message": "You have reached your ten_secondly_rolling limit."},
        headers={"Retry-After": "3"},
        path_prefix=NOTES_CREATE,
    )
    items = hubspot_items(["9001", "9002", "9004"], notes=120, tasks=15)

    results = await governed.create_activities("deals", items)

    # Notes: 100 refused with 429 then resent, plus 20; tasks: 15 in one request.
    assert hs_standin.count(NOTES_CREATE, "POST") == 3
    assert [c.status for c in hs_standin.calls if c.path == NOTES_CREATE].count(429) == 1
    assert hs_standin.count(TASKS_CREATE, "POST") == 1
    assert sum(clock.slept) >= 3.0  # the Retry-After was waited out
    assert len(hs_standin.objects["notes"]) == 120 and len(hs_standin.objects["tasks"]) == 15
    assert_hubspot_created(hs_standin, items, results)


async def test_governed_salesforce_transient_batch_is_not_resent(
    sf: SalesforceCRM, sf_standin: SalesforceStandIn
) -> None:
    governed = GovernedCRM(sf, MemoryBudgetStore(), name="sf", requests=100, per_seconds=10.0)
    sf_standin.faults.fail_next(
        1, 503, [{"message": "down", "errorCode": "SERVER_UNAVAILABLE"}], path_prefix=SF_COLLECTIONS
    )
    opp = sf_standin.ids("Opportunity")[0]
    with pytest.raises(CRMError) as caught:
        await governed.create_activities("Opportunity", [(opp, Activity("note", "once"))])
    assert caught.value.kind is CRMErrorKind.TRANSIENT
    assert sf_standin.count(SF_COLLECTIONS, "POST") == 1  # a write's outcome is unknown


async def test_instrumented_crm_counts_create_activities(
    hs: HubSpotCRM, hs_standin: HubSpotStandIn
) -> None:
    metrics = Metrics()
    counted = InstrumentedCRM(hs, metrics)
    results = await counted.create_activities("deals", hubspot_items(["9001"], 2, 1))
    assert all(isinstance(r, str) for r in results)
    value = metrics.registry.get_sample_value(
        "gate_crm_calls_total", {"method": "create_activities", "status": "ok"}
    )
    assert value == 1.0
    assert len(hs_standin.activities) == 3
