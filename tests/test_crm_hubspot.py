"""The HubSpot adapter, driven through the real hubspot-api-client against the HubSpot stand-in
over 127.0.0.1; and the stand-in itself, shown refusing what HubSpot refuses."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.crm.hubspot import HubSpotCRM
from bot.engine.ports import Activity, CRMError, CRMErrorKind, Owner
from bot.sandbox.hubspot import HubSpotStandIn

TOKEN = "pat-na1-0c1d2e3f-sandbox-secret"
BATCH_UPDATE = "/crm/v3/objects/deals/batch/update"
BATCH_READ = "/crm/v3/objects/deals/batch/read"


@pytest.fixture
async def standin() -> AsyncIterator[HubSpotStandIn]:
    server = HubSpotStandIn(TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def crm(standin: HubSpotStandIn) -> AsyncIterator[HubSpotCRM]:
    adapter = HubSpotCRM(TOKEN, standin.url, portal_id="4242")
    yield adapter
    await adapter.close()


@pytest.fixture
async def http(standin: HubSpotStandIn) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(standin.url, headers=headers) as session:
        yield session


def refusal(outcome: CRMError | None) -> CRMError:
    assert isinstance(outcome, CRMError), outcome
    return outcome


def new_deals(standin: HubSpotStandIn, count: int) -> list[str]:
    return [
        standin.add_record(
            "deals", {"dealname": f"Deal {n}", "amount": "100", "pipeline": "default"}
        )
        for n in range(count)
    ]


# --- the adapter ------------------------------------------------------------------------------


async def test_read_records_returns_hubspot_strings_and_omits_missing(crm: HubSpotCRM) -> None:
    states = await crm.read_records(
        "deals", ["9001", "9004", "123456789"], ["amount", "description"]
    )

    assert set(states) == {"9001", "9004"}
    assert states["9001"].values == {
        "amount": "48000",
        "description": "Renewal of the platform licence, 3 years.",
    }
    assert states["9004"].values["description"] is None


async def test_single_update_lands_with_integration_history(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    before = standin.value("deals", "9001", "hs_lastmodifieddate")

    result = await crm.update_records(
        "deals", {"9001": {"amount": 1000, "dealstage": "contractsent"}}
    )

    assert result == {"9001": None}
    assert standin.value("deals", "9001", "amount") == "1000"
    assert standin.value("deals", "9001", "dealstage") == "contractsent"
    assert standin.value("deals", "9001", "hs_lastmodifieddate") != before
    newest, previous = standin.history("deals", "9001", "amount")[:2]
    assert (newest["value"], newest["sourceType"]) == ("1000", "INTEGRATION")
    assert (previous["value"], previous["sourceType"]) == ("48000", "CRM_UI")


async def test_batch_update_writes_all_records_in_one_request(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    updates = {rid: {"hs_next_step": f"Call back {rid}"} for rid in ("9001", "9002", "9003")}

    result = await crm.update_records("deals", updates)

    assert result == dict.fromkeys(updates)
    assert standin.count(BATCH_UPDATE, "POST") == 1
    assert standin.value("deals", "9002", "hs_next_step") == "Call back 9002"


async def test_batch_with_nonexistent_record_writes_the_rest(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    result = await crm.update_records(
        "deals", {"9001": {"hs_priority": "high"}, "31337": {"hs_priority": "high"}}
    )

    assert result["9001"] is None
    error = refusal(result["31337"])
    assert error.kind is CRMErrorKind.NOT_FOUND
    assert "Could not update some DEAL objects" in error.message
    assert standin.value("deals", "9001", "hs_priority") == "high"
    assert standin.count(BATCH_UPDATE) == 1  # a 207 is an answer, not a reason to resend


async def test_batch_refused_for_one_bad_value_is_bisected(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    updates: dict[str, dict[str, Any]] = {
        "9001": {"hs_forecast_category": "COMMIT"},
        "9002": {"hs_forecast_category": "MAYBE"},
        "9003": {"hs_forecast_category": "OMIT"},
        "9004": {"hs_forecast_category": "BEST_CASE"},
    }

    result = await crm.update_records("deals", updates)

    assert [rid for rid, e in result.items() if e is None] == ["9001", "9003", "9004"]
    error = refusal(result["9002"])
    assert error.kind is CRMErrorKind.VALIDATION
    assert error.message.startswith("Property values were not valid: ")
    assert "MAYBE was not one of the allowed options" in error.message
    assert standin.value("deals", "9002", "hs_forecast_category") == "BEST_CASE"
    assert standin.value("deals", "9001", "hs_forecast_category") == "COMMIT"
    assert standin.value("deals", "9004", "hs_forecast_category") == "BEST_CASE"
    # whole batch (400), halves [9001 9002] (400) and [9003 9004] (200), singles 9001 and 9002
    assert [c.status for c in standin.calls if c.path == BATCH_UPDATE].count(400) == 3
    assert standin.count(BATCH_UPDATE) == 5


async def test_reads_and_writes_are_chunked_at_100(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    ids = new_deals(standin, 150)

    states = await crm.read_records("deals", ids, ["dealname"])
    result = await crm.update_records("deals", {rid: {"amount": 250} for rid in ids})

    assert len(states) == 150 and states[ids[149]].values == {"dealname": "Deal 149"}
    assert standin.count(BATCH_READ) == 2
    assert standin.count(BATCH_UPDATE) == 2
    assert all(e is None for e in result.values()) and len(result) == 150
    assert {standin.value("deals", rid, "amount") for rid in ids} == {"250"}


async def test_a_rate_limited_chunk_does_not_hide_the_written_one(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    ids = new_deals(standin, 150)
    standin.faults.fail_next(
        1,
        429,
        {"status": "error", "message": "You have reached your ten_secondly_rolling limit."},
        headers={"Retry-After": "3"},
        path_prefix=BATCH_UPDATE,
    )

    result = await crm.update_records("deals", {rid: {"amount": 7} for rid in ids})

    limited = [rid for rid, e in result.items() if e is not None]
    assert len(limited) in (50, 100)  # whichever chunk reached HubSpot first
    assert {refusal(result[rid]).kind for rid in limited} == {CRMErrorKind.RATE_LIMITED}
    written = [rid for rid in ids if rid not in limited]
    assert {standin.value("deals", rid, "amount") for rid in written} == {"7"}
    assert {standin.value("deals", rid, "amount") for rid in limited} == {"100"}


async def test_owners_resolve_ids_to_people(crm: HubSpotCRM, standin: HubSpotStandIn) -> None:
    owners = await crm.owners(["101", "102", "101", "999999"])

    assert owners == {
        "101": Owner("101", "ava.reed@example.com", "Ava Reed"),
        "102": Owner("102", "ben.okafor@example.com", "Ben Okafor"),
        "999999": Owner("999999", None),  # unknown to HubSpot (a deactivated owner): no email
    }
    assert standin.count("/crm/v3/owners/") == 3  # one request per distinct id
    assert await crm.owners([]) == {}


async def test_notes_and_tasks_are_created_with_associations_and_archived(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    note_id = await crm.create_activity(
        "deals", "9001", Activity("note", "Customer asked for SSO.", subject="Call summary")
    )
    task_id = await crm.create_activity(
        "contacts", "5001", Activity("task", "Send the MSA redline.", due="2026-12-01")
    )
    company_note = await crm.create_activity("companies", "7001", Activity("note", "Met at expo"))

    note, task, other = standin.activities
    assert (note.id, note.object_type, note.associations) == (
        note_id,
        "notes",
        [("deals", "9001", 214)],
    )
    assert note.properties["hs_note_body"] == "Call summary\n\nCustomer asked for SSO."
    assert note.properties["hs_timestamp"]
    assert (task.id, task.associations) == (task_id, [("contacts", "5001", 204)])
    assert task.properties["hs_task_subject"] == "Send the MSA redline."
    assert task.properties["hs_task_status"] == "NOT_STARTED"
    assert task.properties["hs_timestamp"] == "2026-12-01T00:00:00.000Z"
    assert (other.id, other.associations) == (company_note, [("companies", "7001", 190)])

    await crm.delete_activity("note", note_id)
    await crm.delete_activity("task", task_id)

    assert [a.archived for a in standin.activities] == [True, True, False]
    with pytest.raises(CRMError) as missing:
        await crm.delete_activity("note", note_id)
    assert missing.value.kind is CRMErrorKind.NOT_FOUND


async def test_activity_on_a_missing_record_is_refused(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    with pytest.raises(CRMError) as refused:
        await crm.create_activity("deals", "31337", Activity("task", "Chase", subject="Chase"))

    assert refused.value.kind is CRMErrorKind.VALIDATION
    assert "31337" in refused.value.message
    assert standin.activities == []


async def test_describe_maps_types_and_takes_stages_from_pipelines(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    standin.add_pipeline_stage("deals", "default", "negotiation", "Negotiation")

    deals = await crm.describe("deals")
    companies = await crm.describe("companies")

    kinds = {name: (f.type, f.writable) for name, f in deals.items()}
    assert kinds["dealname"] == ("string", True)
    assert kinds["description"] == ("text", True)
    assert kinds["amount"] == ("number", True)
    assert kinds["closedate"] == ("datetime", True)
    assert kinds["renewal_date"] == ("date", True)
    assert kinds["hs_forecast_category"] == ("enumeration", True)
    assert kinds["hs_is_closed"] == ("bool", False)
    assert kinds["hs_object_id"] == ("number", False)
    assert kinds["hs_lastmodifieddate"] == ("datetime", False)
    stages = [(o.value, o.label) for o in deals["dealstage"].options]
    assert stages[0] == ("appointmentscheduled", "Appointment Scheduled")
    assert stages[-1] == ("negotiation", "Negotiation")
    assert [o.value for o in deals["hs_forecast_category"].options] == [
        "PIPELINE", "BEST_CASE", "COMMIT", "CLOSED", "OMIT",
    ]  # fmt: skip
    assert standin.count("/crm/v3/pipelines/deals") == 1
    assert (companies["is_public"].type, companies["industry"].type) == ("bool", "enumeration")
    assert standin.count("/crm/v3/pipelines/companies") == 0


async def test_schema_drift_shows_in_describe_and_in_refusals(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    standin.rename_property("deals", "hs_next_step", "next_step_v2")
    standin.set_read_only("deals", "amount")

    fields = await crm.describe("deals")
    result = await crm.update_records(
        "deals", {"9001": {"hs_next_step": "x"}, "9002": {"amount": 1}}
    )

    assert "hs_next_step" not in fields and fields["next_step_v2"].writable
    assert fields["amount"].writable is False
    assert "PROPERTY_DOESNT_EXIST" in refusal(result["9001"]).message
    assert "READ_ONLY_VALUE" in refusal(result["9002"]).message


async def test_wrong_token_is_unauthorized_without_echoing_it(standin: HubSpotStandIn) -> None:
    wrong = "pat-na1-wrong-token-9f8e7d"
    adapter = HubSpotCRM(wrong, standin.url)
    try:
        with pytest.raises(CRMError) as failed:
            await adapter.read_records("deals", ["9001"], ["amount"])
        with pytest.raises(CRMError) as failed_write:
            await adapter.update_records("deals", {"9001": {"amount": 1}})
    finally:
        await adapter.close()

    for error in (failed.value, failed_write.value):
        assert error.kind is CRMErrorKind.UNAUTHORIZED and error.status == 401
        assert "Authentication credentials not found" in error.message
        assert wrong not in str(error) and wrong not in repr(error.args)
    assert standin.value("deals", "9001", "amount") == "48000"


async def test_rate_limit_gives_retry_after(crm: HubSpotCRM, standin: HubSpotStandIn) -> None:
    standin.faults.rate_limit = 1

    await crm.read_records("deals", ["9001"], ["amount"])
    with pytest.raises(CRMError) as limited:
        await crm.update_records("deals", {"9001": {"amount": 1}})

    error = limited.value
    assert error.kind is CRMErrorKind.RATE_LIMITED and error.retryable
    assert error.retry_after is not None and 1 <= error.retry_after <= 10
    assert "ten_secondly_rolling" in error.message
    assert standin.value("deals", "9001", "amount") == "48000"


async def test_server_error_is_transient_and_not_retried(
    crm: HubSpotCRM, standin: HubSpotStandIn
) -> None:
    standin.faults.fail_next(
        1, 502, {"status": "error", "message": "Bad gateway"}, path_prefix=BATCH_UPDATE
    )

    with pytest.raises(CRMError) as failed:
        await crm.update_records("deals", {"9001": {"amount": 5}})

    assert failed.value.kind is CRMErrorKind.TRANSIENT and failed.value.status == 502
    assert standin.count(BATCH_UPDATE) == 1  # the client did not resend the write


async def test_slow_write_times_out_as_transient(standin: HubSpotStandIn) -> None:
    adapter = HubSpotCRM(TOKEN, standin.url, timeout=0.2)
    standin.faults.latency = 1.0
    try:
        started = time.monotonic()
        with pytest.raises(CRMError) as failed:
            await adapter.update_records("deals", {"9001": {"amount": 5}})
        elapsed = time.monotonic() - started
    finally:
        await adapter.close()

    assert failed.value.kind is CRMErrorKind.TRANSIENT  # sent, unanswered: outcome unknown
    assert "ReadTimeout" in failed.value.message
    assert elapsed < 0.9  # gave up at the timeout, did not wait for or resend the write


async def test_unreachable_hubspot_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = HubSpotCRM(TOKEN, f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(CRMError) as failed:
            await adapter.describe("deals")
    finally:
        await adapter.close()

    assert failed.value.kind is CRMErrorKind.TRANSIENT
    assert TOKEN not in failed.value.message


async def test_token_echoed_by_hubspot_is_scrubbed_from_errors_and_logs(
    crm: HubSpotCRM, standin: HubSpotStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    standin.faults.fail_next(
        1,
        403,
        {"status": "error", "message": f"Token Bearer {TOKEN} lacks scope crm.objects.deals.write"},
    )

    with caplog.at_level(logging.DEBUG), pytest.raises(CRMError) as failed:
        await crm.update_records("deals", {"9001": {"amount": 5}})

    assert failed.value.kind is CRMErrorKind.UNAUTHORIZED
    assert "lacks scope crm.objects.deals.write" in failed.value.message
    assert TOKEN not in str(failed.value)
    assert caplog.records and TOKEN not in caplog.text


async def test_record_url() -> None:
    with_portal = HubSpotCRM(TOKEN, portal_id="4242", app_url="https://app-eu1.hubspot.com")
    without = HubSpotCRM(TOKEN)

    assert (
        with_portal.record_url("deals", "9001")
        == "https://app-eu1.hubspot.com/contacts/4242/record/0-3/9001"
    )
    assert with_portal.record_url("contacts", "5001").endswith("/contacts/4242/record/0-1/5001")
    assert with_portal.record_url("companies", "7001").endswith("/contacts/4242/record/0-2/7001")
    assert (
        without.record_url("deals", "9001") == "https://app.hubspot.com/l/contacts/record/0-3/9001"
    )
    await with_portal.close()
    await without.close()


# --- the stand-in, spoken to directly ------------------------------------------------------------


async def test_standin_refuses_missing_or_bad_token(standin: HubSpotStandIn) -> None:
    async with aiohttp.ClientSession(standin.url) as anonymous:
        async with anonymous.get("/crm/v3/objects/deals/9001") as missing:
            body = await missing.json()
        headers = {"Authorization": "Bearer nope"}
        async with anonymous.get("/crm/v3/objects/deals/9001", headers=headers) as bad:
            bad_status = bad.status

    assert (missing.status, bad_status) == (401, 401)
    assert body["status"] == "error" and body["category"] == "INVALID_AUTHENTICATION"
    assert body["correlationId"]


async def test_standin_refuses_batches_over_100(http: aiohttp.ClientSession) -> None:
    inputs = [{"id": str(n), "properties": {"amount": "1"}} for n in range(101)]
    async with http.post(BATCH_UPDATE, json={"inputs": inputs}) as update:
        update_body = await update.json()
    history_read = {
        "properties": ["amount"],
        "propertiesWithHistory": ["amount"],
        "inputs": inputs[:51],
    }
    async with http.post(BATCH_READ, json=history_read) as read:
        read_status = read.status

    assert update.status == 400 and update_body["category"] == "VALIDATION_ERROR"
    assert read_status == 400  # 50 is the limit when history is asked for


async def test_standin_refuses_read_only_and_unknown_properties(
    http: aiohttp.ClientSession, standin: HubSpotStandIn
) -> None:
    async with http.patch(
        "/crm/v3/objects/deals/9001",
        json={"properties": {"hs_object_id": "1", "made_up_field": "x", "amount": "5"}},
    ) as resp:
        body = await resp.json()

    assert resp.status == 400 and body["category"] == "VALIDATION_ERROR"
    assert body["message"].startswith("Property values were not valid: ")
    assert '"error":"READ_ONLY_VALUE"' in body["message"]
    assert '"error":"PROPERTY_DOESNT_EXIST"' in body["message"]
    assert standin.value("deals", "9001", "amount") == "48000"  # nothing written


async def test_standin_checks_numbers_dates_and_options(
    http: aiohttp.ClientSession, standin: HubSpotStandIn
) -> None:
    refused = {}
    for prop, value in {
        "amount": "lots",
        "renewal_date": "2027-01-01T10:30:00Z",
        "closedate": "next tuesday",
        "dealstage": "closedmaybe",
    }.items():
        async with http.patch(
            "/crm/v3/objects/deals/9002", json={"properties": {prop: value}}
        ) as r:
            refused[prop] = (r.status, (await r.json())["message"])
    async with http.patch(
        "/crm/v3/objects/deals/9002",
        json={
            "properties": {"amount": 1000, "renewal_date": "2027-01-01", "dealstage": "closedwon"}
        },
    ) as ok:
        written = (await ok.json())["properties"]

    assert all(status == 400 for status, _ in refused.values())
    assert "INVALID_OPTION" in refused["dealstage"][1]
    assert "not midnight" in refused["renewal_date"][1]
    assert written["amount"] == "1000"  # HubSpot hands every value back as a string
    assert standin.value("deals", "9002", "renewal_date") == "2027-01-01"


async def test_standin_batch_update_is_all_or_nothing_on_validation(
    http: aiohttp.ClientSession, standin: HubSpotStandIn
) -> None:
    inputs = [
        {"id": "9001", "properties": {"hs_next_step": "ok"}},
        {"id": "9002", "properties": {"hs_forecast_category": "SOMEDAY"}},
    ]
    async with http.post(BATCH_UPDATE, json={"inputs": inputs}) as resp:
        body = await resp.json()

    assert resp.status == 400 and "SOMEDAY" in body["message"]
    assert standin.value("deals", "9001", "hs_next_step") == "Send security questionnaire"


async def test_standin_partial_read_and_unknown_object(http: aiohttp.ClientSession) -> None:
    request = {"properties": ["dealname"], "inputs": [{"id": "9001"}, {"id": "1"}]}
    async with http.post(BATCH_READ, json=request) as read:
        body = await read.json()
    async with http.get("/crm/v3/objects/deals/1") as missing:
        missing_body = await missing.json()

    assert read.status == 207
    assert [r["id"] for r in body["results"]] == ["9001"]
    assert body["errors"][0]["category"] == "OBJECT_NOT_FOUND"
    assert body["errors"][0]["context"] == {"ids": ["1"]}
    assert missing.status == 404 and missing_body["category"] == "OBJECT_NOT_FOUND"


async def test_standin_history_is_newest_first_with_sources(
    http: aiohttp.ClientSession, standin: HubSpotStandIn
) -> None:
    async with http.patch("/crm/v3/objects/deals/9003", json={"properties": {"amount": 90000}}):
        pass
    standin.human_edit("deals", "9003", "amount", "91000", user_id=7000103)
    url = "/crm/v3/objects/deals/9003?properties=amount&propertiesWithHistory=amount"
    async with http.get(url) as resp:
        body = await resp.json()

    history = body["propertiesWithHistory"]["amount"]
    assert body["properties"]["amount"] == "91000"
    assert [(h["value"], h["sourceType"]) for h in history] == [
        ("91000", "CRM_UI"),
        ("90000", "INTEGRATION"),
        ("96000", "CRM_UI"),
    ]
    assert history[0]["updatedByUserId"] == 7000103


async def test_standin_rate_limit_speaks_hubspot(
    http: aiohttp.ClientSession, standin: HubSpotStandIn
) -> None:
    standin.faults.rate_limit = 1
    async with http.get("/crm/v3/pipelines/deals") as first:
        first_status = first.status
    async with http.get("/crm/v3/pipelines/deals") as limited:
        body = await limited.json()

    assert (first_status, limited.status) == (200, 429)
    assert body["errorType"] == "RATE_LIMIT" and body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert int(limited.headers["Retry-After"]) >= 1


async def test_standin_activities_need_real_records_and_archive_is_idempotent(
    http: aiohttp.ClientSession, standin: HubSpotStandIn
) -> None:
    to_nowhere = {
        "properties": {"hs_note_body": "x", "hs_timestamp": "2026-01-01T00:00:00Z"},
        "associations": [
            {
                "to": {"id": "31337"},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214}],
            }
        ],
    }
    async with http.post("/crm/v3/objects/notes", json=to_nowhere) as refused:
        refused_status = refused.status
    async with http.post(
        "/crm/v3/objects/notes", json={"properties": {"hs_note_body": "x"}}
    ) as undated:
        undated_body = await undated.json()
    async with http.delete("/crm/v3/objects/notes/31337") as archive:
        archive_status = archive.status

    assert refused_status == 400 and standin.activities == []
    assert undated.status == 400 and "hs_timestamp" in undated_body["message"]
    assert archive_status == 204  # HubSpot does not say whether there was anything to archive
