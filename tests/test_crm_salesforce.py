"""SalesforceCRM through the real simple-salesforce against the Salesforce stand-in over HTTP, and
the stand-in itself refusing what Salesforce refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest

from bot.crm.salesforce import SalesforceCRM
from bot.engine.ports import Activity, CRMError, CRMErrorKind, Owner
from bot.sandbox import seed
from bot.sandbox.salesforce import SalesforceStandIn, parse_dt

TOKEN = "sandbox-salesforce-token"
V = "/services/data/v59.0"


@pytest.fixture
async def standin() -> AsyncIterator[SalesforceStandIn]:
    server = SalesforceStandIn(TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def crm(standin: SalesforceStandIn) -> AsyncIterator[SalesforceCRM]:
    client = SalesforceCRM(standin.url, TOKEN)
    yield client
    await client.close()


@pytest.fixture
async def http(standin: SalesforceStandIn) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=standin.url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as session:
        yield session


def opp(standin: SalesforceStandIn, n: int = 0) -> str:
    return standin.ids("Opportunity")[n]


# --- the adapter -----------------------------------------------------------------------------
async def test_read_records_returns_current_values(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    first, second = opp(standin, 0), opp(standin, 1)
    missing = "006Hs0000009999"  # well-formed, no such record
    states = await crm.read_records(
        "Opportunity",
        [first, second[:15], missing],
        ["Name", "stagename", "Amount", "CloseDate", "Owner.Email"],
    )
    assert set(states) == {first, second[:15]}  # keyed as the caller spelled them
    acme = states[first].values
    assert acme == {
        "Name": "Acme Corp - Platform renewal",
        "stagename": "Qualification",
        "Amount": 48000.0,
        "CloseDate": "2026-12-19",
        "Owner.Email": seed.OWNERS[0].email,
    }
    assert states[second[:15]].values["Name"] == "Globex - Analytics add-on"
    assert standin.count(f"{V}/query", "GET") == 1


async def test_update_lands_with_history_and_timestamps(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    rid = opp(standin)
    before = standin.value("Opportunity", rid, "LastModifiedDate")
    result = await crm.update_records(
        "Opportunity", {rid: {"StageName": "Negotiation/Review", "Amount": 51000}}
    )
    assert result == {rid: None}
    assert standin.value("Opportunity", rid, "StageName") == "Negotiation/Review"
    assert standin.value("Opportunity", rid, "Amount") == 51000.0
    assert standin.value("Opportunity", rid, "Probability") == 90.0  # derived from the stage
    assert parse_dt(standin.value("Opportunity", rid, "LastModifiedDate")) > parse_dt(before)
    changes = {
        (h["Field"], h["OldValue"], h["NewValue"]) for h in standin.history("Opportunity", rid)
    }
    assert changes == {
        ("StageName", "Qualification", "Negotiation/Review"),
        ("Amount", 48000.0, 51000.0),
    }
    assert standin.count(f"{V}/composite/sobjects", "PATCH") == 1


async def test_batch_with_one_record_failing_a_validation_rule(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    standin.add_validation_rule(
        "Opportunity",
        lambda r: r["Amount"] is not None and r["Amount"] < 0,
        "Amount cannot be negative",
        field="Amount",
    )
    ids = standin.ids("Opportunity")
    bad = ids[2]
    updates = {rid: {"Amount": -1 if rid == bad else 1000 + i} for i, rid in enumerate(ids)}
    result = await crm.update_records("Opportunity", updates)
    assert [rid for rid, err in result.items() if err is None] == [r for r in ids if r != bad]
    error = result[bad]
    assert error is not None and error.kind is CRMErrorKind.VALIDATION
    assert "Amount cannot be negative" in error.message
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in error.message
    assert standin.value("Opportunity", bad, "Amount") == 96000.0  # untouched
    assert standin.value("Opportunity", ids[0], "Amount") == 1000.0
    assert standin.count(f"{V}/composite/sobjects") == 1


async def test_writes_and_reads_are_chunked_at_200(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    owner = seed.OWNERS[1].sf_user_id
    ids = [
        standin.create(
            "Opportunity",
            {
                "Name": f"Bulk {i}",
                "StageName": "Prospecting",
                "CloseDate": "2027-01-01",
                "OwnerId": owner,
            },
        )
        for i in range(450)
    ]
    result = await crm.update_records(
        "Opportunity", {rid: {"NextStep": f"call {rid}"} for rid in ids}
    )
    assert len(result) == 450 and all(err is None for err in result.values())
    assert standin.count(f"{V}/composite/sobjects", "PATCH") == 3  # 200 + 200 + 50
    assert standin.value("Opportunity", ids[449], "NextStep") == f"call {ids[449]}"

    states = await crm.read_records("Opportunity", ids, ["NextStep"])
    assert len(states) == 450 and states[ids[0]].values["NextStep"] == f"call {ids[0]}"
    assert standin.count(f"{V}/query", "GET") == 3
    assert sorted(q.count("'") // 2 for q in standin.queries) == [50, 200, 200]  # ids per IN


async def test_owners_come_with_emails_and_names(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    ids = standin.ids("Opportunity")
    states = await crm.read_records("Opportunity", ids, ["OwnerId"])
    owner_ids = [states[rid].values["OwnerId"] for rid in ids[:4]]
    owners = await crm.owners([*owner_ids, "00G000000000001AAA"])  # and a queue's id
    assert [owners[o].email for o in owner_ids] == [
        seed.OWNERS[0].email, seed.OWNERS[1].email, seed.OWNERS[2].email, seed.OWNERS[0].email,
    ]  # fmt: skip
    assert owners[owner_ids[2]] == Owner(
        seed.OWNERS[2].sf_user_id, seed.OWNERS[2].email, seed.OWNERS[2].name
    )
    assert owners["00G000000000001AAA"] == Owner("00G000000000001AAA", None)  # no User: no email
    assert standin.queries[-1].startswith("SELECT Id, Email, Name FROM User WHERE Id IN (")
    assert len(standin.queries) == 2  # the records, then every owner in one query


async def test_task_and_note_are_created_and_deleted(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    rid = opp(standin)
    task_id = await crm.create_activity(
        "Opportunity",
        rid,
        Activity("task", "Chase the security questionnaire", due="2026-12-01T15:00:00Z"),
    )
    lead = standin.ids("Lead")[0]
    note_id = await crm.create_activity(
        "Lead", lead, Activity("note", "Agent changed Rating to Hot\nbecause of the demo")
    )
    lead_task = await crm.create_activity(
        "Lead", lead, Activity("task", "Call back", subject="Call")
    )

    (task,) = standin.activities(rid)
    assert task["Id"] == task_id and task["attributes"]["type"] == "Task"
    assert task["WhatId"] == rid and task["ActivityDate"] == "2026-12-01"
    assert task["Subject"] == "Chase the security questionnaire" and task["Status"] == "Not Started"
    by_id = {a["Id"]: a for a in standin.activities(lead)}
    assert by_id[note_id]["Title"] == "Agent changed Rating to Hot"
    assert by_id[note_id]["Body"].endswith("because of the demo")
    assert by_id[lead_task]["WhoId"] == lead and by_id[lead_task]["WhatId"] is None

    await crm.delete_activity("task", task_id)
    await crm.delete_activity("note", note_id)
    assert standin.activities(rid) == []
    assert [a["Id"] for a in standin.activities(lead)] == [lead_task]
    with pytest.raises(CRMError) as gone:
        await crm.delete_activity("note", note_id)
    assert gone.value.kind is CRMErrorKind.NOT_FOUND


async def test_activity_on_a_missing_record_is_not_found(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    with pytest.raises(CRMError) as raised:
        await crm.create_activity("Opportunity", "006Hs0000009999", Activity("note", "hello"))
    assert raised.value.kind is CRMErrorKind.NOT_FOUND
    assert standin.activities() == []


async def test_describe_maps_types_and_picklists(crm: SalesforceCRM) -> None:
    schema = await crm.describe("Opportunity")
    stage = schema["StageName"]
    assert stage.type == "enumeration" and stage.writable
    assert [o.value for o in stage.options][:2] == ["Prospecting", "Qualification"]
    assert {"Closed Won", "Id. Decision Makers"} <= {o.value for o in stage.options}
    forecast = {o.value for o in schema["ForecastCategoryName"].options}
    assert forecast == {"Omitted", "Pipeline", "BestCase", "Commit", "Closed"}
    assert (schema["Amount"].type, schema["Probability"].type) == ("number", "number")
    assert not schema["Probability"].writable and not schema["LastModifiedDate"].writable
    assert schema["Description"].type == "text" and schema["CloseDate"].type == "date"
    assert schema["LastModifiedDate"].type == "datetime" and schema["IsPrivate"].type == "bool"
    assert schema["OwnerId"].type == "string" and schema["Name"].options == ()


async def test_schema_changes_reach_the_adapter(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    standin.rename_field("Opportunity", "NextStep", "Next_Step__c")
    standin.set_updateable("Opportunity", "Description", False)
    schema = await crm.describe("Opportunity")
    assert "Next_Step__c" in schema and "NextStep" not in schema
    assert not schema["Description"].writable
    with pytest.raises(CRMError) as raised:
        await crm.read_records("Opportunity", [opp(standin)], ["NextStep"])
    assert raised.value.kind is CRMErrorKind.VALIDATION
    assert "No such column 'NextStep'" in raised.value.message
    rid = opp(standin)
    result = await crm.update_records("Opportunity", {rid: {"Description": "x"}})
    assert result[rid] is not None and "INVALID_FIELD_FOR_INSERT_UPDATE" in result[rid].message


async def test_unknown_field_refuses_the_chunk_and_writes_nothing(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    ids = standin.ids("Opportunity")[:2]
    result = await crm.update_records(
        "Opportunity", {ids[0]: {"NextStep": "ok"}, ids[1]: {"Bogus__c": "x"}}
    )
    assert all(e is not None and e.kind is CRMErrorKind.VALIDATION for e in result.values())
    assert "No such column 'Bogus__c'" in result[ids[1]].message  # type: ignore[union-attr]
    assert standin.value("Opportunity", ids[0], "NextStep") == "Send security questionnaire"


async def test_deleted_and_malformed_records_are_not_found(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    gone, kept = standin.ids("Opportunity")[:2]
    standin.delete("Opportunity", gone)
    bad = "006' OR Name != '"
    result = await crm.update_records(
        "Opportunity", {gone: {"NextStep": "x"}, kept: {"NextStep": "y"}, bad: {"NextStep": "z"}}
    )
    assert result[kept] is None
    assert result[gone] is not None and result[gone].kind is CRMErrorKind.NOT_FOUND
    assert "ENTITY_IS_DELETED" in result[gone].message
    assert result[bad] is not None and result[bad].kind is CRMErrorKind.NOT_FOUND
    assert standin.count(f"{V}/composite/sobjects") == 1


async def test_a_malicious_id_never_reaches_soql(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    rid = opp(standin)
    injected = ["x') OR Id != ('", "006Hs0000000002IAA' OR Name LIKE '%", "006Hs0000000002\\"]
    states = await crm.read_records("Opportunity", [rid, *injected], ["Name"])
    assert list(states) == [rid]
    owners = await crm.owners(injected)
    assert {o.email for o in owners.values()} == {None}
    assert len(standin.queries) == 1  # the all-bad call sent nothing
    assert standin.queries[0] == f"SELECT Id, Name FROM Opportunity WHERE Id IN ('{rid}')"
    with pytest.raises(CRMError) as bad_type:
        await crm.read_records("Opportunity WHERE Name != ''", [rid], ["Name"])
    with pytest.raises(CRMError) as bad_field:
        await crm.read_records("Opportunity", [rid], ["Name FROM User --"])
    assert bad_type.value.kind is bad_field.value.kind is CRMErrorKind.VALIDATION
    assert len(standin.queries) == 1


async def test_wrong_token_is_unauthorized_and_never_echoed(standin: SalesforceStandIn) -> None:
    secret = "00Dxx0000001gPL!AQ4AQFwrong-token-value"
    client = SalesforceCRM(standin.url, secret)
    try:
        with pytest.raises(CRMError) as raised:
            await client.read_records("Opportunity", [opp(standin)], ["Name"])
    finally:
        await client.close()
    assert raised.value.kind is CRMErrorKind.UNAUTHORIZED
    assert raised.value.status == 401 and "INVALID_SESSION_ID" in raised.value.message
    assert secret not in str(raised.value)


async def test_request_limit_exceeded_is_rate_limited(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    standin.faults.rate_limit = 1  # base.py fails on 0 (empty window): spend the one allowed
    await crm.describe("Opportunity")
    with pytest.raises(CRMError) as raised:
        await crm.update_records("Opportunity", {opp(standin): {"NextStep": "x"}})
    assert raised.value.kind is CRMErrorKind.RATE_LIMITED and raised.value.retryable
    assert raised.value.status == 403 and "REQUEST_LIMIT_EXCEEDED" in raised.value.message
    assert standin.value("Opportunity", opp(standin), "NextStep") == "Send security questionnaire"


async def test_other_403_is_unauthorized(standin: SalesforceStandIn, crm: SalesforceCRM) -> None:
    body = [
        {"errorCode": "API_DISABLED_FOR_ORG", "message": "API is not enabled for this Organization"}
    ]
    standin.faults.fail_next(1, 403, body)
    with pytest.raises(CRMError) as raised:
        await crm.describe("Opportunity")
    assert raised.value.kind is CRMErrorKind.UNAUTHORIZED
    assert "API is not enabled" in raised.value.message


async def test_injected_503_is_transient_and_not_retried(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    standin.faults.fail_next(1, 503, "Service Unavailable", path_prefix=f"{V}/composite")
    with pytest.raises(CRMError) as raised:
        await crm.update_records("Opportunity", {opp(standin): {"NextStep": "x"}})
    assert raised.value.kind is CRMErrorKind.TRANSIENT and raised.value.status == 503
    assert standin.count(f"{V}/composite/sobjects") == 1  # no silent retry of the write


async def test_failure_after_a_landed_chunk_is_reported_per_record(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    ids = [
        standin.create(
            "Opportunity", {"Name": f"B{i}", "StageName": "Prospecting", "CloseDate": "2027-01-01"}
        )
        for i in range(250)
    ]
    standin.faults.rate_limit = 1  # the first chunk passes, the second is refused
    result = await crm.update_records("Opportunity", {rid: {"NextStep": "n"} for rid in ids})
    assert all(result[rid] is None for rid in ids[:200])
    assert all(
        result[rid] is not None and result[rid].kind is CRMErrorKind.RATE_LIMITED
        for rid in ids[200:]
    )
    assert standin.value("Opportunity", ids[0], "NextStep") == "n"
    assert standin.value("Opportunity", ids[249], "NextStep") is None


async def test_connection_refused_is_transient() -> None:
    client = SalesforceCRM("http://127.0.0.1:9", TOKEN)
    try:
        with pytest.raises(CRMError) as raised:
            await client.describe("Opportunity")
    finally:
        await client.close()
    assert raised.value.kind is CRMErrorKind.TRANSIENT


async def test_token_is_scrubbed_from_echoed_error_bodies(
    standin: SalesforceStandIn, crm: SalesforceCRM
) -> None:
    echo = [{"errorCode": "UNKNOWN_EXCEPTION", "message": f"An unexpected error: session {TOKEN}"}]
    standin.faults.fail_next(1, 500, echo)
    with pytest.raises(CRMError) as raised:
        await crm.read_records("Opportunity", [opp(standin)], ["Name"])
    assert raised.value.kind is CRMErrorKind.TRANSIENT
    assert TOKEN not in str(raised.value) and "[redacted]" in raised.value.message


async def test_record_url_and_constructor_checks(crm: SalesforceCRM) -> None:
    url = crm.record_url("Opportunity", "006Hs0000000001IAA")
    assert url.endswith("/lightning/r/Opportunity/006Hs0000000001IAA/view")
    assert url.startswith(crm.instance_url)
    with pytest.raises(ValueError):
        SalesforceCRM("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        SalesforceCRM("ftp://example.com", TOKEN)


# --- the stand-in refuses what Salesforce refuses --------------------------------------------
async def patch(
    http: aiohttp.ClientSession, rid: str, body: Any, **headers: str
) -> tuple[int, Any]:
    async with http.patch(f"{V}/sobjects/Opportunity/{rid}", json=body, headers=headers) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else None)


async def test_standin_refuses_more_than_200_records(
    standin: SalesforceStandIn, http: aiohttp.ClientSession
) -> None:
    rid = opp(standin)
    records = [{"attributes": {"type": "Opportunity"}, "id": rid, "NextStep": "x"}] * 201
    async with http.patch(f"{V}/composite/sobjects", json={"records": records}) as resp:
        assert resp.status == 400
        assert (await resp.json())[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert standin.value("Opportunity", rid, "NextStep") == "Send security questionnaire"


async def test_standin_refuses_unknown_and_read_only_fields(
    standin: SalesforceStandIn, http: aiohttp.ClientSession
) -> None:
    rid = opp(standin)
    status, body = await patch(http, rid, {"Colour": "blue"})
    assert status == 400
    assert body == [
        {
            "message": "No such column 'Colour' on sobject of type Opportunity",
            "errorCode": "INVALID_FIELD",
            "fields": [],
        }
    ]
    status, body = await patch(http, rid, {"Probability": 99})
    assert status == 400 and body[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert body[0]["fields"] == ["Probability"]
    assert standin.value("Opportunity", rid, "Probability") == 10.0


async def test_standin_refuses_bad_values(
    standin: SalesforceStandIn, http: aiohttp.ClientSession
) -> None:
    rid = opp(standin)
    status, body = await patch(http, rid, {"StageName": "Won-ish"})
    assert status == 400 and body[0]["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert body[0]["message"] == "Stage: bad value for restricted picklist field: Won-ish"
    status, body = await patch(http, rid, {"Amount": "lots"})
    assert status == 400 and body[0]["errorCode"] == "JSON_PARSER_ERROR"
    assert "Cannot deserialize instance of currency" in body[0]["message"]
    status, body = await patch(http, rid, {"CloseDate": "12/19/2026"})
    assert status == 400 and body[0]["errorCode"] == "JSON_PARSER_ERROR"
    status, body = await patch(http, rid, {"StageName": None})
    assert status == 400 and body[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    status, body = await patch(http, rid, {"OwnerId": standin.ids("Lead")[0]})
    assert status == 400 and body[0]["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    assert standin.value("Opportunity", rid, "StageName") == "Qualification"
    assert standin.history("Opportunity", rid) == []


async def test_standin_honours_if_unmodified_since(
    standin: SalesforceStandIn, http: aiohttp.ClientSession
) -> None:
    rid = opp(standin)
    seen = format_datetime(
        parse_dt(standin.value("Opportunity", rid, "LastModifiedDate")), usegmt=True
    )
    status, _ = await patch(http, rid, {"NextStep": "mine"}, **{"If-Unmodified-Since": seen})
    assert status == 204 and standin.value("Opportunity", rid, "NextStep") == "mine"

    other = opp(standin, 1)
    stale = format_datetime(
        parse_dt(standin.value("Opportunity", other, "LastModifiedDate")), usegmt=True
    )
    standin.human_edit("Opportunity", other, "NextStep", "a person's edit")
    status, body = await patch(http, other, {"NextStep": "agent"}, **{"If-Unmodified-Since": stale})
    assert status == 412 and body[0]["errorCode"] == "PRECONDITION_FAILED"
    assert standin.value("Opportunity", other, "NextStep") == "a person's edit"
    status, _ = await patch(
        http, other, {"NextStep": "agent"}, **{"If-Unmodified-Since": "yesterday"}
    )
    assert status == 400


async def test_standin_all_or_none_rolls_back(
    standin: SalesforceStandIn, http: aiohttp.ClientSession
) -> None:
    good, bad = standin.ids("Opportunity")[:2]
    records = [
        {"attributes": {"type": "Opportunity"}, "id": good, "NextStep": "g"},
        {"attributes": {"type": "Opportunity"}, "id": bad, "StageName": "Nope"},
    ]
    async with http.patch(
        f"{V}/composite/sobjects", json={"allOrNone": True, "records": records}
    ) as resp:
        assert resp.status == 200
        results = await resp.json()
    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert standin.value("Opportunity", good, "NextStep") == "Send security questionnaire"


async def test_standin_record_shape_auth_and_limit_header(
    standin: SalesforceStandIn, http: aiohttp.ClientSession
) -> None:
    rid = opp(standin)
    async with http.get(
        f"{V}/sobjects/Opportunity/{rid}", params={"fields": "Name,Amount"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Sforce-Limit-Info"].startswith("api-usage=")
        assert await resp.json() == {
            "attributes": {"type": "Opportunity", "url": f"{V}/sobjects/Opportunity/{rid}"},
            "Id": rid,
            "Name": "Acme Corp - Platform renewal",
            "Amount": 48000.0,
        }
    async with http.get(f"{V}/sobjects/Opportunity/006Hs0000009999") as resp:
        assert resp.status == 404
        assert await resp.json() == [
            {
                "message": "The requested resource does not exist",
                "errorCode": "NOT_FOUND",
                "fields": [],
            }
        ]
    bad = {"Authorization": "Bearer nope"}
    async with http.get(f"{V}/sobjects/Opportunity/{rid}", headers=bad) as resp:
        assert resp.status == 401
        assert await resp.json() == [
            {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
        ]


async def test_standin_soql(standin: SalesforceStandIn, http: aiohttp.ClientSession) -> None:
    async def query(q: str) -> tuple[int, Any]:
        async with http.get(f"{V}/query/", params={"q": q}) as resp:
            return resp.status, await resp.json()

    rid = opp(standin)
    standin.human_edit(
        "Opportunity", rid, "StageName", "Closed Won", user_id=seed.OWNERS[1].sf_user_id
    )
    status, body = await query(
        "SELECT Field, OldValue, NewValue, CreatedById, CreatedDate FROM OpportunityFieldHistory "
        f"WHERE OpportunityId IN ('{rid}')"
    )
    assert status == 200 and body["done"] is True and body["totalSize"] == 1
    row = body["records"][0]
    assert (row["Field"], row["OldValue"], row["NewValue"]) == (
        "StageName",
        "Qualification",
        "Closed Won",
    )
    assert row["CreatedById"] == seed.OWNERS[1].sf_user_id

    status, body = await query(f"SELECT Id, Owner.Name FROM Opportunity WHERE Id = '{rid[:15]}'")
    assert body["records"][0]["Owner"]["Name"] == seed.OWNERS[0].name
    status, body = await query(
        "SELECT Name FROM Opportunity WHERE Amount > 50000 AND IsPrivate = false"
    )
    assert [r["Name"] for r in body["records"]] == ["Initech - Expansion to EMEA"]

    status, body = await query("SELECT Id, Colour FROM Opportunity")
    assert status == 400 and body[0]["errorCode"] == "INVALID_FIELD"
    status, body = await query("SELECT Id FROM Opportunity WHERE Id IN ('a' OR 1=1")
    assert status == 400 and body[0]["errorCode"] == "MALFORMED_QUERY"
    status, body = await query("SELECT Id FROM Opportunity WHERE Id = 'abc'")
    assert status == 400 and body[0]["errorCode"] == "INVALID_QUERY_FILTER_OPERATOR"
    status, body = await query("SELECT Id, Id FROM Opportunity")
    assert status == 400 and body[0]["errorCode"] == "MALFORMED_QUERY"


async def test_standin_creates_and_deletes_activities(
    standin: SalesforceStandIn, http: aiohttp.ClientSession
) -> None:
    rid = opp(standin)
    async with http.post(f"{V}/sobjects/Note", json={"ParentId": rid, "Body": "no title"}) as resp:
        assert resp.status == 400
        assert (await resp.json())[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    task = {"WhoId": rid, "Subject": "wrong link"}  # WhoId takes a Lead or Contact only
    async with http.post(f"{V}/sobjects/Task", json=task) as resp:
        assert resp.status == 400
        assert (await resp.json())[0]["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    async with http.post(f"{V}/sobjects/Task", json={"WhatId": rid, "Subject": "ok"}) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["success"] is True and created["id"].startswith("00T")
    async with http.delete(f"{V}/sobjects/Task/{created['id']}") as resp:
        assert resp.status == 204
    async with http.delete(f"{V}/sobjects/Task/{created['id']}") as resp:
        assert resp.status == 404
        assert (await resp.json())[0]["errorCode"] == "ENTITY_IS_DELETED"
    assert standin.activities(rid) == []
