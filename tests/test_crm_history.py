"""`read_history` and `count_records` on both adapters, through the real client libraries
(hubspot-api-client, simple-salesforce) against the stand-ins over 127.0.0.1."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from bot.crm.hubspot import HubSpotCRM
from bot.crm.salesforce import SalesforceCRM
from bot.engine.ports import CRMError, CRMErrorKind, FieldChange
from bot.sandbox import seed
from bot.sandbox.hubspot import APP_ID, HubSpotStandIn
from bot.sandbox.salesforce import API_USER, SalesforceStandIn

HS_TOKEN = "pat-na1-0c1d2e3f-history-secret"
SF_TOKEN = "sandbox-salesforce-token"
V = "/services/data/v59.0"
DEALS_READ = "/crm/v3/objects/deals/batch/read"
DEALS_SEARCH = "/crm/v3/objects/deals/search"
AVA, BEN, CHLOE = seed.OWNERS


@pytest.fixture
async def hubspot() -> AsyncIterator[HubSpotStandIn]:
    server = HubSpotStandIn(HS_TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def hs(hubspot: HubSpotStandIn) -> AsyncIterator[HubSpotCRM]:
    adapter = HubSpotCRM(HS_TOKEN, hubspot.url)
    yield adapter
    await adapter.close()


@pytest.fixture
async def salesforce() -> AsyncIterator[SalesforceStandIn]:
    server = SalesforceStandIn(SF_TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sf(salesforce: SalesforceStandIn) -> AsyncIterator[SalesforceCRM]:
    adapter = SalesforceCRM(salesforce.url, SF_TOKEN)
    yield adapter
    await adapter.close()


def ticking(start: datetime, step: timedelta = timedelta(minutes=1)) -> Callable[[], datetime]:
    """A clock for the Salesforce stand-in that moves on by `step` at every reading."""
    moments = iter(start + n * step for n in range(10_000))
    return lambda: next(moments)


def assert_newest_first_in_utc(changes: list[FieldChange]) -> None:
    assert changes, "expected some history"
    for change in changes:
        assert change.at.tzinfo is not None and change.at.utcoffset() == timedelta(0)
    assert [c.at for c in changes] == sorted((c.at for c in changes), reverse=True)


# --- HubSpot ------------------------------------------------------------------------------------


async def test_hubspot_history_has_the_api_write_and_the_human_edit_newest_first(
    hubspot: HubSpotStandIn, hs: HubSpotCRM
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert await hs.update_records("deals", {"9001": {"amount": 50000}}) == {"9001": None}
    hubspot.human_edit("deals", "9001", "amount", "52000", user_id=7000102)

    history = await hs.read_history(
        "deals", ["9001", "123456789"], ["amount", "hs_priority", "made_up_property"]
    )

    assert set(history) == {"9001"}  # the missing record is absent
    amount = history["9001"]["amount"]
    assert [(c.value, c.source, c.by) for c in amount] == [
        ("52000", "human", "7000102"),  # CRM_UI, by the HubSpot user
        ("50000", "integration", APP_ID),  # INTEGRATION, by our private app
        ("48000", "human", "7000101"),  # the seed, typed in by Ava
    ]
    assert_newest_first_in_utc(amount)
    assert amount[0].at >= before and amount[1].at >= before
    assert amount[2].at < before - timedelta(days=29)  # the seed is a month old
    assert history["9001"]["hs_priority"] == []  # never set
    assert history["9001"]["made_up_property"] == []  # HubSpot ignores unknown properties
    assert hubspot.count(DEALS_READ, "POST") == 1


async def test_hubspot_history_reads_at_most_50_records_a_request(
    hubspot: HubSpotStandIn, hs: HubSpotCRM
) -> None:
    ids = [
        hubspot.add_record("deals", {"dealname": f"Deal {n}", "amount": str(n)}) for n in range(120)
    ]

    history = await hs.read_history("deals", [*ids, ids[0]], ["amount"])

    assert hubspot.count(DEALS_READ, "POST") == 3  # 50 + 50 + 20; the duplicate is sent once
    assert set(history) == set(ids)
    assert all(len(h["amount"]) == 1 for h in history.values())
    assert history[ids[7]]["amount"][0].value == "7"
    assert history[ids[119]]["amount"][0].source == "human"  # add_record is a UI create


async def test_hubspot_other_sources_pass_through_lowercased(
    hubspot: HubSpotStandIn, hs: HubSpotCRM
) -> None:
    deal = hubspot.objects["deals"]["9002"]
    deal.history["hs_next_step"].insert(
        0,
        {
            "value": "Workflow says hi",
            "timestamp": "2030-01-01T00:00:00.000Z",
            "sourceType": "WORKFLOWS",
            "sourceId": "wf-42",
        },
    )

    history = await hs.read_history("deals", ["9002"], ["hs_next_step"])

    newest = history["9002"]["hs_next_step"][0]
    assert (newest.value, newest.source, newest.by) == ("Workflow says hi", "workflows", "wf-42")
    assert newest.at == datetime(2030, 1, 1, tzinfo=UTC)


async def test_hubspot_count_records_uses_search_and_grows(
    hubspot: HubSpotStandIn, hs: HubSpotCRM
) -> None:
    assert await hs.count_records("deals") == 4
    assert await hs.count_records("contact") == 2  # aliases work as elsewhere
    hubspot.add_record("deals", {"dealname": "One more", "amount": "1"})
    hubspot.objects["deals"]["9004"].archived = True  # archived records are not counted

    assert await hs.count_records("deals") == 4
    hubspot.add_record("deals", {"dealname": "And another", "amount": "2"})
    assert await hs.count_records("deals") == 5
    assert hubspot.count(DEALS_SEARCH, "POST") == 3


async def test_hubspot_errors_map_as_for_other_calls(
    hubspot: HubSpotStandIn, hs: HubSpotCRM
) -> None:
    hubspot.faults.fail_next(
        1,
        429,
        {
            "status": "error",
            "message": "You have reached your secondly limit.",
            "errorType": "RATE_LIMIT",
        },
        headers={"Retry-After": "2"},
        path_prefix=DEALS_SEARCH,
    )
    with pytest.raises(CRMError) as limited:
        await hs.count_records("deals")
    with pytest.raises(CRMError) as unknown:
        await hs.count_records("spaceships")
    bad = HubSpotCRM("not-the-token", hubspot.url)
    try:
        with pytest.raises(CRMError) as refused:
            await bad.read_history("deals", ["9001"], ["amount"])
    finally:
        await bad.close()

    assert limited.value.kind is CRMErrorKind.RATE_LIMITED and limited.value.retry_after == 2
    assert unknown.value.kind is CRMErrorKind.VALIDATION
    assert "Unable to infer object type" in unknown.value.message
    assert refused.value.kind is CRMErrorKind.UNAUTHORIZED and refused.value.status == 401


async def test_hubspot_standin_search_answers_like_hubspot(hubspot: HubSpotStandIn) -> None:
    headers = {"Authorization": f"Bearer {HS_TOKEN}"}
    async with aiohttp.ClientSession(hubspot.url, headers=headers) as http:
        async with http.post(DEALS_SEARCH, json={"filterGroups": [], "limit": 201}) as too_many:
            too_many_body = await too_many.json()
        async with http.post(DEALS_SEARCH, json={"filterGroups": [], "limit": 200}) as everything:
            everything_body = await everything.json()
        big = {
            "filterGroups": [
                {"filters": [{"propertyName": "amount", "operator": "GTE", "value": "12500"}]}
            ],
            "sorts": [{"propertyName": "amount", "direction": "DESCENDING"}],
            "properties": ["amount"],
            "limit": 2,
        }
        async with http.post(DEALS_SEARCH, json=big) as page:
            page_body = await page.json()
        async with http.post(
            DEALS_SEARCH, json={**big, "after": page_body["paging"]["next"]["after"]}
        ) as rest:
            rest_body = await rest.json()

    assert too_many.status == 400 and too_many_body["category"] == "VALIDATION_ERROR"
    assert everything.status == 200 and everything_body["total"] == 4
    assert sorted(r["id"] for r in everything_body["results"]) == ["9001", "9002", "9003", "9004"]
    assert "paging" not in everything_body
    assert page_body["total"] == 3  # 48000, 96000, 12500
    assert [r["properties"]["amount"] for r in page_body["results"]] == ["96000", "48000"]
    assert [r["properties"]["amount"] for r in rest_body["results"]] == ["12500"]


# --- Salesforce ---------------------------------------------------------------------------------


async def test_salesforce_history_has_the_api_write_and_the_human_edit_newest_first(
    salesforce: SalesforceStandIn, sf: SalesforceCRM
) -> None:
    start = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    salesforce.now = ticking(start)
    rid = salesforce.ids("Opportunity")[0]
    missing = "006Hs0000009999"
    assert await sf.update_records("Opportunity", {rid: {"StageName": "Negotiation/Review"}}) == {
        rid: None
    }
    salesforce.human_edit("Opportunity", rid, "StageName", "Closed Won", user_id=BEN.sf_user_id)

    history = await sf.read_history(
        "Opportunity", [rid, missing], ["StageName", "Description", "Amount"]
    )

    assert set(history) == {rid}  # the missing record is absent
    stage = history[rid]["StageName"]
    assert [(c.value, c.source, c.by) for c in stage] == [
        ("Closed Won", "human", BEN.sf_user_id),
        ("Negotiation/Review", "integration", API_USER[0]),  # the token's own user
    ]
    assert_newest_first_in_utc(stage)
    assert stage[1].at >= start and stage[0].at > stage[1].at
    assert history[rid]["Description"] == []  # not tracked: no rows, callers use current values
    assert history[rid]["Amount"] == []  # tracked, never changed
    # Who the token belongs to is asked once, then remembered.
    await sf.read_history("Opportunity", [rid], ["StageName"])
    assert salesforce.count("/services/oauth2/userinfo") == 1
    assert any(
        "FROM OpportunityFieldHistory WHERE OpportunityId IN" in q for q in salesforce.queries
    )


async def test_salesforce_same_moment_changes_stay_in_order(
    salesforce: SalesforceStandIn, sf: SalesforceCRM
) -> None:
    salesforce.now = lambda: datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # every change, one instant
    lead = salesforce.ids("Lead")[0]
    await sf.update_records("Lead", {lead: {"Status": "Open - Not Contacted"}})
    salesforce.human_edit("Lead", lead, "Status", "Closed - Converted", user_id=CHLOE.sf_user_id)

    history = await sf.read_history("Lead", [lead[:15]], ["status"])

    assert set(history) == {lead[:15]}  # keyed as the caller spelled the id
    assert [(c.value, c.source) for c in history[lead[:15]]["status"]] == [
        ("Closed - Converted", "human"),
        ("Open - Not Contacted", "integration"),
    ]


async def test_salesforce_integration_user_is_configurable(salesforce: SalesforceStandIn) -> None:
    rid = salesforce.ids("Opportunity")[1]
    salesforce.human_edit("Opportunity", rid, "NextStep", "Call back", user_id=BEN.sf_user_id)
    salesforce.human_edit("Opportunity", rid, "NextStep", "Send quote", user_id=AVA.sf_user_id)
    crm = SalesforceCRM(salesforce.url, SF_TOKEN, integration_user_id=BEN.sf_user_id[:15])
    try:
        history = await crm.read_history("Opportunity", [rid], ["NextStep"])
    finally:
        await crm.close()

    assert [(c.value, c.source) for c in history[rid]["NextStep"]] == [
        ("Send quote", "human"),
        ("Call back", "integration"),  # BEN is the integration user here
    ]
    assert salesforce.count("/services/oauth2/userinfo") == 0  # nothing to ask


async def test_salesforce_lookup_history_is_read_under_its_relationship_name(
    salesforce: SalesforceStandIn, sf: SalesforceCRM
) -> None:
    salesforce.track_field("Opportunity", "OwnerId")
    rid = salesforce.ids("Opportunity")[0]
    # A clock that moves between any two readings: the save still files both rows at one moment.
    ticks = itertools.count()
    start = salesforce.now()
    salesforce.now = lambda: start + timedelta(milliseconds=next(ticks))
    salesforce.human_edit("Opportunity", rid, "OwnerId", CHLOE.sf_user_id)

    history = await sf.read_history("Opportunity", [rid], ["OwnerId"])

    rows = salesforce.history("Opportunity", rid)
    assert {(r["Field"], r["DataType"]) for r in rows} == {("Owner", "EntityId"), ("Owner", "Text")}
    [change] = history[rid]["OwnerId"]  # one change, as ids (what read_records returns)
    assert (change.value, change.source, change.by) == (CHLOE.sf_user_id, "human", AVA.sf_user_id)


async def test_salesforce_object_without_history_table_gives_empty_lists(
    salesforce: SalesforceStandIn, sf: SalesforceCRM
) -> None:
    task = salesforce.create("Task", {"Subject": "Call", "Status": "Not Started"})

    history = await sf.read_history("Task", [task], ["Subject", "Owner.Email"])

    assert history == {task: {"Subject": [], "Owner.Email": []}}
    assert any(q.startswith("SELECT Id, TaskId,") for q in salesforce.queries)  # it was asked


async def test_salesforce_history_is_chunked_at_200_ids(
    salesforce: SalesforceStandIn, sf: SalesforceCRM
) -> None:
    ids = [
        salesforce.create("Opportunity", {"Name": f"Opp {n}", "StageName": "Prospecting"})
        for n in range(250)
    ]
    salesforce.human_edit("Opportunity", ids[-1], "StageName", "Closed Lost")

    history = await sf.read_history("Opportunity", ids, ["StageName"])

    history_queries = [q for q in salesforce.queries if "FROM OpportunityFieldHistory" in q]
    assert len(history_queries) == 2
    assert max(q.count("'006") for q in history_queries) == 200
    assert len(history) == 250
    assert [c.value for c in history[ids[-1]]["StageName"]] == ["Closed Lost"]
    assert history[ids[0]]["StageName"] == []


async def test_salesforce_history_refuses_what_is_not_a_field_name(
    salesforce: SalesforceStandIn, sf: SalesforceCRM
) -> None:
    rid = salesforce.ids("Opportunity")[0]
    with pytest.raises(CRMError) as refused:
        await sf.read_history("Opportunity", [rid], ["StageName') OR Field != ('"])

    assert refused.value.kind is CRMErrorKind.VALIDATION
    assert salesforce.queries == []  # refused before any request


async def test_salesforce_count_records_and_growth(
    salesforce: SalesforceStandIn, sf: SalesforceCRM
) -> None:
    assert await sf.count_records("Opportunity") == 4
    assert await sf.count_records("Lead") == 2
    salesforce.create("Opportunity", {"Name": "New one", "StageName": "Prospecting"})
    assert await sf.count_records("Opportunity") == 5
    salesforce.delete("Opportunity", salesforce.ids("Opportunity")[0])
    assert await sf.count_records("Opportunity") == 4  # deleted records are not counted
    assert salesforce.queries.count("SELECT COUNT() FROM Opportunity") == 3

    with pytest.raises(CRMError) as unknown:
        await sf.count_records("Spaceship__c")
    assert unknown.value.kind is CRMErrorKind.VALIDATION and "INVALID_TYPE" in unknown.value.message
    bad = SalesforceCRM(salesforce.url, "expired-token")
    try:
        with pytest.raises(CRMError) as expired:
            await bad.count_records("Opportunity")
        with pytest.raises(CRMError) as expired_history:
            await bad.read_history("Opportunity", [salesforce.ids("Opportunity")[0]], ["Amount"])
    finally:
        await bad.close()
    assert expired.value.kind is CRMErrorKind.UNAUTHORIZED
    assert expired_history.value.kind is CRMErrorKind.UNAUTHORIZED


async def test_salesforce_standin_count_query(salesforce: SalesforceStandIn) -> None:
    headers = {"Authorization": f"Bearer {SF_TOKEN}"}
    async with aiohttp.ClientSession(salesforce.url, headers=headers) as http:
        query = "SELECT COUNT() FROM Opportunity WHERE Amount > 10000"
        async with http.get(f"{V}/query/", params={"q": query}) as resp:
            body = await resp.json()

    assert resp.status == 200
    assert body == {"totalSize": 3, "done": True, "records": []}
