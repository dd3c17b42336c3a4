"""End to end over HTTP: the real server, the real CRM adapters and Slack client, the stand-ins.

Each test drives `POST /v1/proposals` and reads the outcome from `GET /v1/proposals/{id}`, the
CRM stand-in's state and the Slack stand-in's messages.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import jsonschema
import pytest

from bot.openapi import openapi_document
from bot.sandbox import seed


def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    doc = openapi_document()
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


async def count_rows(server, table: str) -> int:
    async with server.gate.ledger.engine.connect() as conn:
        return (await conn.exec_driver_sql(f"SELECT count(*) FROM {table}")).scalar_one()


async def wait_for(predicate, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
    return result


# --- autonomous -------------------------------------------------------------------------------


async def test_autonomous_change_lands_in_hubspot_with_before_image(server):
    hubspot = server.crm_stand_in
    before = hubspot.value("deals", "9001", "description")
    status, body = await server.propose(
        {
            "object": "deals",
            "record_id": "9001",
            "changes": {"description": "Renewal confirmed on the call of 30 Nov"},
            "reason": "call summary",
            "run_id": "run-1",
        }
    )
    assert status == 202, body
    assert body["status"] == "accepted"
    assert [(c["field"], c["tier"], c["status"]) for c in body["changes"]] == [
        ("description", "autonomous", "queued")
    ]
    schema_validator("ProposalAccepted").validate(body)

    detail = await server.settled(body["id"])
    change = detail["changes"][0]
    assert change["status"] == "committed"
    assert change["before"] == before
    assert change["written"] == "Renewal confirmed on the call of 30 Nov"
    assert change["committed_at"] and detail["agent"] == "test-agent" and detail["run_id"] == "run-1"
    assert hubspot.value("deals", "9001", "description") == "Renewal confirmed on the call of 30 Nov"
    schema_validator("ProposalDetail").validate(detail)
    # the ledger's audit trail holds each step with its actor
    kinds = [e["kind"] for e in await server.gate.ledger.audit_events() if e["proposal_id"] == body["id"]]
    assert kinds == ["proposal.received", "change.classified", "change.committing", "change.committed"]


async def test_autonomous_change_lands_in_salesforce(sf_server):
    sf = sf_server.crm_stand_in
    opp_id = next(iter(sf.records["Opportunity"]))
    before = sf.value("Opportunity", opp_id, "Description")
    status, body = await sf_server.propose(
        {"object": "Opportunity", "record_id": opp_id, "changes": {"Description": "Budget approved by CFO"}}
    )
    assert status == 202, body
    detail = await sf_server.settled(body["id"])
    change = detail["changes"][0]
    assert change["status"] == "committed", change
    assert change["before"] == before
    assert sf.value("Opportunity", opp_id, "Description") == "Budget approved by CFO"


async def test_note_is_created_on_the_record_and_task_waits_for_review(server):
    hubspot = server.crm_stand_in
    status, body = await server.propose(
        {
            "object": "deals",
            "record_id": "9002",
            "activities": [
                {"kind": "note", "body": "Call summary: champion confirmed budget."},
                {"kind": "task", "body": "Send the pricing sheet", "subject": "Pricing", "due": "2026-12-05"},
            ],
        }
    )
    assert status == 202, body
    assert [(c["kind"], c["field"], c["status"]) for c in body["changes"]] == [
        ("activity", "note", "queued"),
        ("activity", "task", "pending_review"),
    ]
    detail = await server.settled(body["id"])
    note = detail["changes"][0]
    assert note["status"] == "committed" and note["activity_id"]
    created = next(a for a in hubspot.activities if a.id == note["activity_id"])
    assert "champion confirmed budget" in created.properties["hs_note_body"]
    assert ("deals", "9002", 214) in created.associations
    assert detail["changes"][1]["status"] == "pending_review"


# --- never_autonomous, read_only, reviewed, mixed -----------------------------------------------


async def test_never_autonomous_writes_nothing_and_posts_one_alert(server):
    hubspot, slack = server.crm_stand_in, server.slack
    amount = hubspot.value("deals", "9001", "amount")
    writes_before = hubspot.count("/crm/v3/objects/deals", method="PATCH") + hubspot.count(
        "/crm/v3/objects/deals/batch/update"
    )
    status, body = await server.propose(
        {"object": "deals", "record_id": "9001", "changes": {"amount": 1_000_000}, "reason": "upsell"}
    )
    assert status == 202
    change = body["changes"][0]
    assert (change["tier"], change["status"]) == ("never_autonomous", "blocked")
    assert "never_autonomous" in change["reason"]

    messages = await wait_for(lambda: slack.messages(seed.ALERTS_CHANNEL))
    await asyncio.sleep(0.3)  # no second message follows
    messages = slack.messages(seed.ALERTS_CHANNEL)
    assert len(messages) == 1
    text = messages[0]["text"]
    assert "test-agent" in text and "amount" in text and "1000000" in text and "9001" in text and "upsell" in text
    assert hubspot.value("deals", "9001", "amount") == amount
    writes_after = hubspot.count("/crm/v3/objects/deals", method="PATCH") + hubspot.count(
        "/crm/v3/objects/deals/batch/update"
    )
    assert writes_after == writes_before
    detail = await server.proposal(body["id"])
    assert detail["changes"][0]["status"] == "blocked" and detail["changes"][0]["written"] is None


async def test_mixed_proposal_is_classified_change_by_change(server):
    status, body = await server.propose(
        {
            "object": "deals",
            "record_id": "9003",
            "changes": {
                "description": "EMEA rollout confirmed",
                "dealstage": "closedwon",
                "amount": 99000,
                "pipeline": "other",
            },
        }
    )
    assert status == 202
    by_field = {c["field"]: (c["tier"], c["status"]) for c in body["changes"]}
    assert by_field == {
        "description": ("autonomous", "queued"),
        "dealstage": ("reviewed", "pending_review"),
        "amount": ("never_autonomous", "blocked"),
        "pipeline": ("read_only", "refused"),
    }
    refused = next(c for c in body["changes"] if c["field"] == "pipeline")
    assert "read_only" in refused["reason"]
    detail = await server.settled(body["id"])
    statuses = {c["field"]: c["status"] for c in detail["changes"]}
    assert statuses == {
        "description": "committed",
        "dealstage": "pending_review",
        "amount": "blocked",
        "pipeline": "refused",
    }
    hubspot = server.crm_stand_in
    assert hubspot.value("deals", "9003", "dealstage") == "contractsent"
    assert hubspot.value("deals", "9003", "pipeline") == "default"


# --- the stale guard ---------------------------------------------------------------------------


async def test_stale_observed_value_is_a_conflict_and_writes_nothing(server):
    hubspot = server.crm_stand_in
    hubspot.human_edit("deals", "9002", "description", "Edited by the rep a minute ago")
    status, body = await server.propose(
        {
            "object": "deals",
            "record_id": "9002",
            "changes": {"description": "Agent's summary"},
            "observed": {"description": ""},
        }
    )
    assert status == 202
    detail = await server.settled(body["id"])
    change = detail["changes"][0]
    assert change["status"] == "conflict"
    assert "Edited by the rep" in change["error"]
    assert change["observed"] == ""
    assert hubspot.value("deals", "9002", "description") == "Edited by the rep a minute ago"


async def test_matching_observed_value_commits(server):
    status, body = await server.propose(
        {
            "object": "deals",
            "record_id": "9003",
            "changes": {"description": "New text"},
            "observed": {"description": "EMEA rollout, 400 seats."},
        }
    )
    assert status == 202
    assert (await server.settled(body["id"]))["changes"][0]["status"] == "committed"


# --- CRM errors reach the ledger and the agent ---------------------------------------------------


async def test_crm_validation_error_fails_the_change_with_the_crms_message(server):
    server.gate.schemas.invalidate()  # a value only the CRM can refuse: intake has no schema now
    status, body = await server.propose(
        {"object": "companies", "record_id": "7002", "changes": {"industry": "NOT_AN_INDUSTRY"}}
    )
    assert status == 202
    detail = await server.settled(body["id"])
    change = detail["changes"][0]
    assert change["status"] == "failed"
    assert "NOT_AN_INDUSTRY" in change["error"]
    messages = await wait_for(lambda: server.slack.messages(seed.ALERTS_CHANNEL))
    assert "Commit failed" in messages[0]["text"] and "industry" in messages[0]["text"]


async def test_a_missing_record_fails_without_touching_others(server):
    _, missing = await server.propose({"object": "deals", "record_id": "424242", "changes": {"description": "x"}})
    _, present = await server.propose({"object": "deals", "record_id": "9004", "changes": {"description": "y"}})
    assert (await server.settled(missing["id"]))["changes"][0]["status"] == "failed"
    assert "not found" in (await server.proposal(missing["id"]))["changes"][0]["error"]
    assert (await server.settled(present["id"]))["changes"][0]["status"] == "committed"


async def test_rate_limited_crm_is_retried_and_writes_once(server):
    hubspot = server.crm_stand_in
    hubspot.faults.fail_next(
        2,
        429,
        {"status": "error", "message": "You have reached your ten_secondly_rolling limit.", "errorType": "RATE_LIMIT"},
        headers={"Retry-After": "1"},
    )
    status, body = await server.propose({"object": "deals", "record_id": "9004", "changes": {"description": "z"}})
    assert status == 202
    detail = await server.settled(body["id"], timeout=15)
    assert detail["changes"][0]["status"] == "committed"
    assert hubspot.value("deals", "9004", "description") == "z"
    assert hubspot.count("/crm/v3/objects/deals/batch/update") == 1


# --- idempotency -------------------------------------------------------------------------------


async def test_replay_returns_the_same_answer_and_writes_once(server):
    hubspot = server.crm_stand_in
    body = {"object": "deals", "record_id": "9001", "changes": {"description": "once"}}
    key = str(uuid.uuid4())
    first = await server.propose(body, key=key)
    await server.settled(first[1]["id"])
    writes = hubspot.count("/crm/v3/objects/deals/batch/update")
    # Same key, same body (even with keys in another order): same status and body, no write.
    reordered = {"changes": {"description": "once"}, "record_id": "9001", "object": "deals"}
    async with server.http.post(
        f"{server.url}/v1/proposals", json=reordered, headers=server.headers(key)
    ) as resp:
        assert resp.status == first[0]
        assert await resp.json() == first[1]
        assert resp.headers["Idempotent-Replayed"] == "true"
    await asyncio.sleep(0.5)
    assert hubspot.count("/crm/v3/objects/deals/batch/update") == writes
    assert await count_rows(server, "proposals") == 1


async def test_same_key_with_another_body_is_422(server):
    key = str(uuid.uuid4())
    await server.propose({"object": "deals", "record_id": "9001", "changes": {"description": "a"}}, key=key)
    status, body = await server.propose(
        {"object": "deals", "record_id": "9001", "changes": {"description": "b"}}, key=key
    )
    assert status == 422 and body["error"]["code"] == "idempotency_key_reused"
    assert await count_rows(server, "proposals") == 1


async def test_keys_are_scoped_per_agent(server):
    _, other_key = await server.gate.ledger.create_agent("other-agent")
    key = str(uuid.uuid4())
    body = {"object": "deals", "record_id": "9001", "changes": {"description": "a"}}
    _, first = await server.propose(body, key=key)
    async with server.http.post(
        f"{server.url}/v1/proposals", json=body, headers=server.headers(key, key=other_key)
    ) as resp:
        second = await resp.json()
    assert resp.status == 202 and second["id"] != first["id"]
    # and one agent cannot read the other's proposal
    async with server.http.get(
        f"{server.url}/v1/proposals/{first['id']}", headers=server.headers(key=other_key)
    ) as resp:
        assert resp.status == 404


async def test_concurrent_replays_of_one_key_make_one_proposal(server):
    key = str(uuid.uuid4())
    body = {"object": "deals", "record_id": "9002", "changes": {"description": "concurrent"}}
    results = await asyncio.gather(*[server.propose(body, key=key) for _ in range(20)])
    assert {status for status, _ in results} == {202}
    assert len({answer["id"] for _, answer in results}) == 1
    assert await count_rows(server, "proposals") == 1
    await server.settled(results[0][1]["id"])
    assert server.crm_stand_in.count("/crm/v3/objects/deals/batch/update") == 1


# --- bad input ---------------------------------------------------------------------------------


async def _raw_post(server, data: bytes | str, *, headers: dict[str, str] | None = None):
    hdrs = {"Content-Type": "application/json", **server.headers(str(uuid.uuid4()))}
    if headers is not None:
        hdrs = headers
    async with server.http.post(f"{server.url}/v1/proposals", data=data, headers=hdrs) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("payload", "status", "code", "mentions"),
    [
        (b'{"object": "deals", ', 400, "malformed_json", "not valid JSON"),
        (b"\xff\xfe", 400, "malformed_json", "not valid JSON"),
        # Python's parser takes these; JSON, the CRMs and PostgreSQL's JSON columns do not.
        (b'{"object": "deals", "record_id": "1", "changes": {"amount": NaN}}', 400, "malformed_json", "NaN is not a JSON value"),
        (b'{"object": "deals", "record_id": "1", "changes": {"amount": -Infinity}}', 400, "malformed_json", "-Infinity"),
        (b'{"object": "deals", "record_id": "1", "changes": {"amount": 1e999}}', 400, "malformed_json", "1e999 is too large"),
        # SQLite would store it as a float, and no CRM number field holds it exactly.
        (b'{"object": "deals", "record_id": "1", "changes": {"amount": 123456789012345678901234567890}}', 422, "invalid_body", "64-bit"),
        (b'{"object": "deals", "record_id": "1", "changes": {"amount": ' + b"9" * 5000 + b"}}", 422, "invalid_body", "64-bit"),
        (b"[1, 2]", 422, "invalid_body", "JSON object"),
        (json.dumps({"record_id": "1", "changes": {"description": "x"}}), 422, "invalid_body", "object"),
        (json.dumps({"object": "deals", "record_id": "1", "changes": {"description": {"a": 1}}}), 422, "invalid_body", "changes.description"),
        (json.dumps({"object": "deals", "record_id": 17, "changes": {"description": "x"}}), 422, "invalid_body", "record_id"),
        (json.dumps({"object": "deals", "record_id": "1", "changes": {"description": "x"}, "colour": "red"}), 422, "invalid_body", "colour"),
        (json.dumps({"object": "tickets", "record_id": "1", "changes": {"subject": "x"}}), 422, "unknown_object", "tickets"),
        (json.dumps({"object": "deals", "record_id": "1", "changes": {}}), 422, "empty_proposal", "no changes"),
        (json.dumps({"object": "deals", "record_id": "1", "changes": {f"f{i}": "x" for i in range(51)}}), 422, "too_many_changes", "51 changes"),
        (json.dumps({"object": "deals", "record_id": "1", "changes": {"description": "x"}, "observed": {"amount": 1}}), 422, "observed_without_change", "observed.amount"),
        (json.dumps({"object": "deals", "record_id": "1", "changes": {"description": "x"}, "callback_url": "ftp://x"}), 422, "invalid_body", "callback_url"),
        (json.dumps({"object": "deals", "record_id": "1", "activities": [{"kind": "email", "body": "x"}]}), 422, "invalid_body", "activities.0.kind"),
    ],
)
async def test_bad_input_is_a_4xx_naming_the_problem_and_records_nothing(server, payload, status, code, mentions):
    got_status, body = await _raw_post(server, payload)
    assert got_status == status, body
    assert body["error"]["code"] == code
    assert mentions in body["error"]["message"] or mentions == body["error"].get("field")
    schema_validator("ErrorBody").validate(body)
    assert await count_rows(server, "proposals") == 0
    assert await count_rows(server, "changes") == 0
    async with server.http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200


async def test_oversized_body_is_413(server):
    big = json.dumps({"object": "deals", "record_id": "1", "changes": {"description": "x" * (300 * 1024)}})
    status, body = await _raw_post(server, big)
    assert status == 413 and body["error"]["code"] == "body_too_large"
    assert await count_rows(server, "proposals") == 0
    # and without a Content-Length (chunked), the limit holds too
    async def chunks():
        for _ in range(300):
            yield b"x" * 1024

    async with server.http.post(
        f"{server.url}/v1/proposals", data=chunks(), headers=server.headers(str(uuid.uuid4()))
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "body_too_large"
    assert await count_rows(server, "proposals") == 0


async def test_missing_idempotency_key_is_400(server):
    status, body = await _raw_post(
        server,
        json.dumps({"object": "deals", "record_id": "1", "changes": {"description": "x"}}),
        headers={"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"},
    )
    assert status == 400 and body["error"]["code"] == "missing_idempotency_key"
    assert await count_rows(server, "proposals") == 0


@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer gk_not-a-real-key", "Basic dXNlcjpwYXNz"])
async def test_without_a_valid_key_is_401_and_records_nothing(server, auth):
    headers = {"Idempotency-Key": "k", "Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    status, body = await _raw_post(
        server, json.dumps({"object": "deals", "record_id": "9001", "changes": {"description": "x"}}), headers=headers
    )
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert await count_rows(server, "proposals") == 0
    assert await count_rows(server, "idempotency_keys") == 0


async def test_revoked_key_is_refused(server):
    _, key = await server.gate.ledger.create_agent("short-lived")
    await server.gate.ledger.revoke_agent("short-lived")
    async with server.http.post(
        f"{server.url}/v1/proposals",
        json={"object": "deals", "record_id": "9001", "changes": {"description": "x"}},
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "k"},
    ) as resp:
        assert resp.status == 401


async def test_requests_in_flight_with_a_new_key_share_one_lookup(server):
    """An agent with many requests in flight when its key's cache entry is missing or stale
    costs one database lookup, not one per request (which would take every pooled connection)."""
    from sqlalchemy import event

    _, key = await server.gate.ledger.create_agent("bursty")
    lookups = []

    def count(conn, cursor, statement, *args):
        if "FROM agents" in statement:
            lookups.append(statement)

    sync_engine = server.gate.ledger.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", count)
    try:
        results = await asyncio.gather(
            *[
                _post_with(
                    server,
                    key,
                    {"object": "deals", "record_id": "9003", "changes": {"description": f"b{i}"}},
                )
                for i in range(40)
            ]
        )
    finally:
        event.remove(sync_engine, "before_cursor_execute", count)
    assert [status for status, _ in results] == [202] * 40
    assert len(lookups) == 1


async def _post_with(server, agent_key: str, body: dict) -> tuple[int, dict]:
    async with server.http.post(
        f"{server.url}/v1/proposals",
        json=body,
        headers=server.headers(str(uuid.uuid4()), key=agent_key),
    ) as resp:
        return resp.status, await resp.json()


async def test_unknown_proposal_and_route_are_json_404(server):
    async with server.http.get(f"{server.url}/v1/proposals/prp_nope", headers=server.headers()) as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    async with server.http.get(f"{server.url}/v1/nothing-here", headers=server.headers()) as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    async with server.http.get(f"{server.url}/v1/proposals/prp_x") as resp:
        assert resp.status == 401


async def test_openapi_document_describes_the_served_routes(server):
    async with server.http.get(f"{server.url}/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) >= {"/v1/proposals", "/v1/proposals/{proposal_id}", "/healthz"}
    jsonschema.Draft202012Validator.check_schema({"$defs": doc["components"]["schemas"]})
    post = doc["paths"]["/v1/proposals"]["post"]
    assert {p["name"] for p in post["parameters"]} == {"Idempotency-Key"}
    assert set(post["responses"]) == {"202", "400", "401", "413", "422"}
    # the request schema accepts what the server accepts and refuses what it refuses
    request = schema_validator("ProposalIn")
    request.validate({"object": "deals", "record_id": "9001", "changes": {"description": "x"}})
    assert not request.is_valid({"object": "deals", "record_id": "9001", "changes": {"description": "x"}, "zzz": 1})


async def test_healthz(server):
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


async def test_notes_from_many_proposals_are_created_in_batches(server):
    hubspot = server.crm_stand_in
    answers = await asyncio.gather(
        *[
            server.propose({"object": "deals", "record_id": "9003", "activities": [{"kind": "note", "body": f"Call summary {i}"}]})
            for i in range(12)
        ]
    )
    details = [await server.settled(body["id"]) for _, body in answers]
    assert all(d["changes"][0]["status"] == "committed" for d in details)
    bodies = {a.properties["hs_note_body"] for a in hubspot.activities if a.object_type == "notes"}
    assert {f"Call summary {i}" for i in range(12)} <= bodies
    assert hubspot.count("/crm/v3/objects/notes", method="POST") == hubspot.count("/crm/v3/objects/notes/batch/create")
    assert hubspot.count("/crm/v3/objects/notes/batch/create") < 12
