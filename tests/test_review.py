"""The Slack review loop end to end: a reviewed proposal goes to the owner's DM, and clicks,
modals and commands arrive signed from the Slack stand-in to the gate's /slack/events (or over
Socket Mode), exactly as Slack would send them."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import pytest
from aiohttp import web
from helpers import (
    AVA,
    BEN,
    OPS,
    OUTSIDER,
    action_ids,
    change_status,
    eventually,
    message_text,
    propose_stage,
    review_dm,
)

from bot.engine.callbacks import SIGNATURE_HEADER, verify
from bot.sandbox import seed
from bot.sandbox.slack import AppRejected

# --- routing and the message --------------------------------------------------------------------


async def test_review_reaches_the_owner_dm_with_three_buttons(server):
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    assert action_ids(message) == ["review_approve", "review_edit", "review_reject"]
    styles = {
        e["action_id"]: e.get("style")
        for b in message["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    }
    assert styles == {"review_approve": "primary", "review_edit": None, "review_reject": "danger"}
    text = message_text(message)
    # current -> proposed with the CRM's labels, the agent, its reason and evidence, the run id
    assert "Qualified To Buy" in text and "Contract Sent" in text
    assert "test-agent" in text and "Buyer asked for the contract" in text
    assert "calls.example.com/rec/42" in text and "run-7" in text
    assert "Acme Corp - Platform renewal" in text
    assert "Contract Sent" in message["text"]  # the notification fallback is useful on its own
    # the owner was found through the CRM owner's email
    lookups = server.slack.api_requests("users.lookupByEmail")
    assert [r["email"] for r in lookups] == ["ava.reed@example.com"]
    detail = await server.proposal(body["id"])
    assert detail["changes"][0]["status"] == "pending_review"
    assert server.crm_stand_in.value("deals", "9001", "dealstage") == "qualifiedtobuy"


async def test_owner_lookups_are_cached(server):
    first = await propose_stage(server, "9001")
    await review_dm(server, AVA, first["id"])
    second = await propose_stage(server, "9004", "qualifiedtobuy")  # same owner
    await review_dm(server, AVA, second["id"])
    assert server.slack.api_calls("users.lookupByEmail") == 1
    assert server.slack.api_calls("conversations.open") == 1


# --- approve ------------------------------------------------------------------------------------


async def test_owner_approves_commits_once_and_updates_the_message(server):
    hubspot, slack = server.crm_stand_in, server.slack
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    writes = hubspot.count("/crm/v3/objects/deals/batch/update")
    await slack.click(AVA, channel, message["ts"], "review_approve")
    detail = await change_status(server, body["id"], "committed")
    change = detail["changes"][0]
    assert change["before"] == "qualifiedtobuy" and change["written"] == "contractsent"
    assert change["decided_by"] == AVA and change["decided_at"]
    assert hubspot.value("deals", "9001", "dealstage") == "contractsent"
    assert hubspot.count("/crm/v3/objects/deals/batch/update") == writes + 1

    async def updated():
        m = slack.message(channel, message["ts"])
        return m if not action_ids(m) and "written to the crm" in message_text(m).lower() else None

    final = await eventually(updated, what="message updated with the outcome")
    assert f"<@{AVA}>" in message_text(final)
    assert slack.api_calls("chat.postMessage") == 1  # the review; no alert
    assert slack.api_calls("chat.update") == 1  # one update, with the outcome


async def test_someone_else_cannot_approve(make_server):
    server = await make_server(review_fallback_channel=seed.FALLBACK_CHANNEL)
    slack, hubspot = server.slack, server.crm_stand_in
    # A deal whose owner has no Slack user: the review goes to the shared fallback channel,
    # where anyone can click; only the owner's delegates and ops may decide it.
    hubspot.owners["104"] = {**hubspot.owners["101"], "id": "104", "email": "left.company@example.com"}
    hubspot.human_edit("deals", "9002", "hubspot_owner_id", "104")
    body = await propose_stage(server, "9002")

    def find():
        return next((m for m in slack.messages(seed.FALLBACK_CHANNEL) if body["id"] in json.dumps(m["blocks"])), None)

    message = await eventually(find, what="review in the fallback channel")
    assert "left.company@example.com" in message_text(message)  # says why it is here
    await slack.click(OUTSIDER, seed.FALLBACK_CHANNEL, message["ts"], "review_approve")
    note = await eventually(lambda: slack.ephemerals(OUTSIDER), what="ephemeral refusal")
    assert "not" in note[-1]["text"].lower()
    await asyncio.sleep(0.3)
    assert (await server.proposal(body["id"]))["changes"][0]["status"] == "pending_review"
    assert hubspot.value("deals", "9002", "dealstage") == "presentationscheduled"
    # ops may decide it
    await slack.click(OPS, seed.FALLBACK_CHANNEL, message["ts"], "review_approve")
    await change_status(server, body["id"], "committed")


async def test_a_crafted_payload_cannot_approve_another_proposal(server):
    slack = server.slack
    mine = await propose_stage(server, "9002")  # Ben's deal
    theirs = await propose_stage(server, "9001")  # Ava's deal
    ben_channel, ben_message = await review_dm(server, BEN, mine["id"])
    await review_dm(server, AVA, theirs["id"])
    # Ben edits the button value of his own message to Ava's proposal id.
    forged = copy.deepcopy(ben_message)
    for block in forged["blocks"]:
        for element in block.get("elements", []):
            if element.get("action_id") == "review_approve":
                element["value"] = theirs["id"]
    slack._find_message(ben_channel, ben_message["ts"]).update(blocks=forged["blocks"])
    await slack.click(BEN, ben_channel, ben_message["ts"], "review_approve")
    await eventually(lambda: slack.ephemerals(BEN), what="refusal")
    await asyncio.sleep(0.3)
    assert (await server.proposal(theirs["id"]))["changes"][0]["status"] == "pending_review"
    assert (await server.proposal(mine["id"]))["changes"][0]["status"] == "pending_review"


async def test_twenty_concurrent_approvals_commit_once(server):
    hubspot, slack = server.crm_stand_in, server.slack
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    writes = hubspot.count("/crm/v3/objects/deals/batch/update")
    await asyncio.gather(*[slack.click(AVA, channel, message["ts"], "review_approve") for _ in range(20)])
    await change_status(server, body["id"], "committed")
    await asyncio.sleep(0.5)
    assert hubspot.count("/crm/v3/objects/deals/batch/update") == writes + 1
    events = [e for e in await server.gate.ledger.audit_events() if e["proposal_id"] == body["id"]]
    assert [e["kind"] for e in events].count("review.decided") == 1
    assert [e["kind"] for e in events].count("change.committed") == 1
    # the later clicks were told who decided
    notes = await eventually(lambda: len(slack.ephemerals(AVA)) >= 19 and slack.ephemerals(AVA))
    assert all("already" in n["text"].lower() for n in notes)


# --- edit ---------------------------------------------------------------------------------------


async def test_edit_commits_the_edited_picklist_value(server):
    hubspot, slack = server.crm_stand_in, server.slack
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    await slack.click(AVA, channel, message["ts"], "review_edit")
    modal = (await eventually(lambda: slack.views(AVA), what="edit modal"))[-1]
    change_id = body["changes"][0]["id"]
    block = next(b for b in modal["blocks"] if b.get("block_id") == f"chg:{change_id}")
    assert block["element"]["type"] == "static_select"
    assert {"closedwon", "contractsent"} <= {o["value"] for o in block["element"]["options"]}

    # a value the CRM does not offer is refused inside the modal
    answer = await slack.submit_view(
        AVA,
        modal["id"],
        {f"chg:{change_id}": {"value": {"type": "static_select", "selected_option": {"value": "bogus", "text": {"type": "plain_text", "text": "Bogus"}}}}},
    )
    assert answer["response_action"] == "errors" and f"chg:{change_id}" in answer["errors"]
    assert (await server.proposal(body["id"]))["changes"][0]["status"] == "pending_review"

    await slack.submit_form(AVA, modal["id"], {f"chg:{change_id}": "decisionmakerboughtin"})
    detail = await change_status(server, body["id"], "committed")
    change = detail["changes"][0]
    assert change["proposed"] == "contractsent"
    assert change["approved"] == "decisionmakerboughtin"
    assert change["written"] == "decisionmakerboughtin"
    assert hubspot.value("deals", "9001", "dealstage") == "decisionmakerboughtin"


# --- reject -------------------------------------------------------------------------------------


async def test_reject_records_the_reason_and_writes_nothing(server):
    hubspot, slack = server.crm_stand_in, server.slack
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    writes = hubspot.count("/crm/v3/objects/deals/batch/update")
    await slack.click(AVA, channel, message["ts"], "review_reject")
    modal = (await eventually(lambda: slack.views(AVA), what="reject modal"))[-1]
    await slack.submit_form(AVA, modal["id"], {"reason": "The buyer has not signed the NDA yet"})
    detail = await change_status(server, body["id"], "rejected")
    assert detail["changes"][0]["decided_by"] == AVA
    assert "NDA" in detail["changes"][0]["error"]
    await asyncio.sleep(0.3)
    assert hubspot.count("/crm/v3/objects/deals/batch/update") == writes
    assert hubspot.value("deals", "9001", "dealstage") == "qualifiedtobuy"

    async def shows_rejection():
        m = slack.message(channel, message["ts"])
        return not action_ids(m) and "NDA" in message_text(m)

    await eventually(shows_rejection, what="message shows the rejection")


# --- stale state and expiry ---------------------------------------------------------------------


async def test_a_value_changed_after_the_dm_is_a_conflict(server):
    hubspot, slack = server.crm_stand_in, server.slack
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    hubspot.human_edit("deals", "9001", "dealstage", "closedlost")
    await slack.click(AVA, channel, message["ts"], "review_approve")
    detail = await change_status(server, body["id"], "conflict")
    assert "closedlost" in detail["changes"][0]["error"]
    assert hubspot.value("deals", "9001", "dealstage") == "closedlost"

    async def shows_conflict():
        m = slack.message(channel, message["ts"])
        return "closedlost" in message_text(m).lower() or "closed lost" in message_text(m).lower()

    await eventually(shows_conflict, what="message shows the new current value")


async def test_an_expired_review_cannot_be_approved(make_server):
    server = await make_server(review_expiry="1s", review_reminder="0s")
    hubspot, slack = server.crm_stand_in, server.slack
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    await change_status(server, body["id"], "expired", timeout=10)

    async def buttons_gone():
        return not action_ids(slack.message(channel, message["ts"]))

    await eventually(buttons_gone, what="expired message without buttons")
    # a click that was already on its way when the review expired
    decision = await server.gate.reviews.decide(body["id"], AVA, "approve", source=(channel, message["ts"]))
    assert decision.outcome == "already_decided"
    await asyncio.sleep(0.3)
    assert hubspot.value("deals", "9001", "dealstage") == "qualifiedtobuy"
    assert (await server.proposal(body["id"]))["changes"][0]["status"] == "expired"


async def test_a_reminder_is_sent_before_expiry(make_server):
    server = await make_server(review_expiry="3s", review_reminder="2500ms")
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])

    def reminder():
        return [m for m in server.slack.messages(channel) if m.get("thread_ts") == message["ts"]]

    found = await eventually(reminder, what="a reminder in the thread")
    assert len(found) == 1 and "expire" in found[0]["text"].lower()


# --- the agent learns the outcome ---------------------------------------------------------------


@pytest.fixture
async def callback_sink():
    received: list[tuple[dict[str, str], bytes]] = []
    failures = {"left": 1}

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        if failures["left"]:
            failures["left"] -= 1
            return web.Response(status=503)
        received.append((dict(request.headers), body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/hook", received
    await runner.cleanup()


async def test_the_callback_receives_signed_outcomes(server, callback_sink):
    url, received = callback_sink
    slack = server.slack
    approve = await propose_stage(server, "9001", callback_url=url)
    reject = await propose_stage(server, "9003", "closedwon", callback_url=url)
    channel, message = await review_dm(server, AVA, approve["id"])
    await slack.click(AVA, channel, message["ts"], "review_approve")
    channel2, message2 = await review_dm(server, seed.OWNERS[2].slack_id, reject["id"])
    await slack.click(seed.OWNERS[2].slack_id, channel2, message2["ts"], "review_reject")
    modal = (await eventually(lambda: slack.views(seed.OWNERS[2].slack_id)))[-1]
    await slack.submit_form(seed.OWNERS[2].slack_id, modal["id"], {"reason": "too early"})

    await eventually(lambda: len(received) >= 2, timeout=15, what="two callbacks (after one 503)")
    payloads = {}
    for headers, body in received:
        assert verify("test-callback-secret", body, headers[SIGNATURE_HEADER])
        assert not verify("wrong-secret", body, headers[SIGNATURE_HEADER])
        data = json.loads(body)
        payloads[data["proposal_id"]] = data
    assert payloads[approve["id"]]["status"] == "committed"
    assert payloads[approve["id"]]["written"] == "contractsent"
    assert payloads[reject["id"]]["status"] == "rejected"
    assert payloads[reject["id"]]["reject_reason"] == "too early"
    recorded = await server.gate.ledger.callbacks_for(approve["id"]) + await server.gate.ledger.callbacks_for(reject["id"])
    assert all(r["delivered_at"] for r in recorded)
    assert sum(r["attempts"] for r in recorded) == 3  # one 503, retried


async def test_callback_url_needs_a_signing_secret(make_server):
    server = await make_server(callback_signing_secret=None)
    status, body = await server.propose(
        {"object": "deals", "record_id": "9001", "changes": {"description": "x"}, "callback_url": "http://127.0.0.1:9/x"}
    )
    assert status == 422 and body["error"]["code"] == "callbacks_disabled"


# --- Slack plumbing -----------------------------------------------------------------------------


async def test_forged_or_stale_signatures_are_401(server):
    slack = server.slack
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    with pytest.raises(AppRejected) as forged:
        await slack.click(AVA, channel, message["ts"], "review_approve", signature="v0=" + "0" * 64)
    assert forged.value.status == 401
    with pytest.raises(AppRejected) as stale:
        await slack.click(AVA, channel, message["ts"], "review_approve", timestamp=int(time.time()) - 600)
    assert stale.value.status == 401
    await asyncio.sleep(0.3)
    assert (await server.proposal(body["id"]))["changes"][0]["status"] == "pending_review"


async def test_socket_mode_drives_an_approval(make_server):
    server = await make_server(slack_app_token="xapp-sandbox", slack_signing_secret=None)
    slack = server.slack
    await eventually(lambda: slack.socket_connected, what="socket mode connection")
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    await slack.click(AVA, channel, message["ts"], "review_approve")
    await change_status(server, body["id"], "committed")
    assert server.crm_stand_in.value("deals", "9001", "dealstage") == "contractsent"
    # HTTP mode's endpoint is not served in Socket Mode
    async with server.http.post(f"{server.url}/slack/events", data=b"x") as resp:
        assert resp.status == 404


async def test_slack_rate_limits_are_waited_out(server):
    slack = server.slack
    slack.faults.fail_next(1, 429, {"ok": False, "error": "ratelimited"}, headers={"Retry-After": "1"}, path_prefix="/api/chat.postMessage")
    body = await propose_stage(server)
    await review_dm(server, AVA, body["id"])
    assert slack.count("/api/chat.postMessage") == 2  # the 429, then the retry after Retry-After


# --- App Home -----------------------------------------------------------------------------------


async def test_app_home_lists_pending_reviews_with_buttons(server):
    slack = server.slack
    body = await propose_stage(server)
    await review_dm(server, AVA, body["id"])
    await slack.open_app_home(AVA)
    home = await eventually(lambda: slack.home(AVA), what="home view")
    assert body["id"] in json.dumps(home)
    await slack.click_home(AVA, "review_approve", block_id=f"home:{body['id']}")
    await change_status(server, body["id"], "committed")

    async def recent():
        h = slack.home(AVA)
        return h and body["id"] not in json.dumps([b for b in h["blocks"] if b["type"] == "actions"])

    await eventually(recent, what="home refreshed without the decided review")


async def test_unroutable_review_alerts_and_ops_decide_from_home(server):
    slack, hubspot = server.slack, server.crm_stand_in
    hubspot.owners["105"] = {**hubspot.owners["101"], "id": "105", "email": "nobody@example.com"}
    hubspot.human_edit("deals", "9004", "hubspot_owner_id", "105")
    body = await propose_stage(server, "9004", "qualifiedtobuy")
    alerts = await eventually(lambda: slack.messages(seed.ALERTS_CHANNEL), what="unroutable alert")
    assert "nobody@example.com" in alerts[0]["text"] and body["id"] in alerts[0]["text"]
    assert (await server.proposal(body["id"]))["changes"][0]["status"] == "pending_review"
    await slack.open_app_home(OPS)
    home = await eventually(lambda: slack.home(OPS), what="ops home")
    assert body["id"] in json.dumps(home)
    await slack.click_home(OPS, "review_approve", block_id=f"home:{body['id']}")
    await change_status(server, body["id"], "committed")
    assert hubspot.value("deals", "9004", "dealstage") == "qualifiedtobuy"


async def test_review_of_a_deleted_record_is_closed(server):
    body = await propose_stage(server, "999999")
    detail = await change_status(server, body["id"], "refused")
    assert "not found" in detail["changes"][0]["error"]


# --- more guarantees ----------------------------------------------------------------------------


async def test_a_slow_crm_never_makes_slack_wait(make_server):
    server = await make_server()
    hubspot, slack = server.crm_stand_in, server.slack
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    hubspot.faults.latency = 3.5  # longer than Slack waits for an ack
    # The stand-in gives up after 3 s as Slack does: these would raise if an ack were late.
    await slack.click(AVA, channel, message["ts"], "review_edit")
    modal = (await eventually(lambda: slack.views(AVA), what="edit modal opened within the trigger's 3 s"))[-1]
    await slack.submit_form(AVA, modal["id"], {f"chg:{body['changes'][0]['id']}": "closedwon"})
    await change_status(server, body["id"], "committed", timeout=30)
    assert hubspot.value("deals", "9001", "dealstage") == "closedwon"


async def test_a_crafted_submission_cannot_reach_a_field_not_under_review(server):
    slack = server.slack
    status, body = await server.propose(
        {"object": "deals", "record_id": "9001", "changes": {"dealstage": "contractsent", "amount": 1}}
    )
    stage, amount = body["changes"]
    assert amount["status"] == "blocked"
    channel, message = await review_dm(server, AVA, body["id"])
    await slack.click(AVA, channel, message["ts"], "review_edit")
    modal = (await eventually(lambda: slack.views(AVA), what="edit modal"))[-1]
    assert f"chg:{amount['id']}" not in json.dumps(modal)
    crafted = {
        f"chg:{stage['id']}": {"value": {"type": "static_select", "selected_option": {"value": "closedwon", "text": {"type": "plain_text", "text": "Closed Won"}}}},
        f"chg:{amount['id']}": {"value": {"type": "plain_text_input", "value": "999999"}},
    }
    answer = await slack.deliver(
        "interactive",
        {
            "type": "view_submission",
            "user": {"id": AVA, "team_id": "T0SANDBOX"},
            "team": {"id": "T0SANDBOX"},
            "view": {**modal, "state": {"values": crafted}},
        },
    )
    assert answer["response_action"] == "errors" and f"chg:{amount['id']}" in answer["errors"]
    # And the engine refuses it even without the modal's check.
    decision = await server.gate.reviews.decide(body["id"], AVA, "edit", edits={amount["id"]: 999999})
    assert decision.outcome == "invalid"
    await asyncio.sleep(0.3)
    detail = await server.proposal(body["id"])
    assert [c["status"] for c in detail["changes"]] == ["pending_review", "blocked"]
    assert server.crm_stand_in.value("deals", "9001", "amount") == "48000"


async def test_an_alert_burst_becomes_digests_and_loses_nothing(server):
    slack = server.slack
    ids = []
    for i in range(12):
        status, body = await server.propose(
            {"object": "deals", "record_id": "9001", "changes": {"amount": 1000 + i}}
        )
        ids.append(body["id"])
    await eventually(
        lambda: all(any(i in m["text"] for m in slack.messages(seed.ALERTS_CHANNEL)) for i in ids),
        timeout=15,
        what="every alert delivered",
    )
    posts = slack.messages(seed.ALERTS_CHANNEL)
    assert len(posts) < len(ids)  # grouped, not one message each
    assert sum(m["text"].count("Blocked") for m in posts) == len(ids)
    assert slack.rate_limited == 0  # never over Slack's per-channel rate
    await eventually(lambda: _unsent_is_zero(server), what="every alert marked sent")


async def _unsent_is_zero(server) -> bool:
    return await server.gate.ledger.unsent_alerts() == 0


async def test_a_burst_of_reviews_does_not_make_the_review_loop_poll_once_per_proposal(make_server):
    """Intake wakes the review loop for every reviewed proposal. While the pace says wait, the
    loop must not ask it again at each wake, and expiry and reminders (due by the clock alone)
    are looked for once per interval: under load these looks were most of the loop's work."""
    from sqlalchemy import event

    server = await make_server(review_budget_share=0.02)
    server.slack.message_rate = None
    engine = server.gate.ledger.engine
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append((statement, parameters))

    for i in range(30):
        server.crm_stand_in.add_record("deals", {"dealname": f"B{i}", "dealstage": "appointmentscheduled", "hubspot_owner_id": "101"}, record_id=f"620{i:02d}")
    # The first pass goes at once and spends the pace; the burst then arrives while it waits.
    _, first = await server.propose({"object": "deals", "record_id": "62000", "changes": {"dealstage": "qualifiedtobuy"}})
    await review_dm(server, AVA, first["id"])
    event.listen(engine.sync_engine, "before_cursor_execute", record)
    started = time.monotonic()
    try:
        for i in range(1, 30):  # one at a time: each is a wake of its own
            status, _ = await server.propose({"object": "deals", "record_id": f"620{i:02d}", "changes": {"dealstage": "qualifiedtobuy"}})
            assert status == 202
        await asyncio.sleep(0.3)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    elapsed = time.monotonic() - started
    pace_looks = [p for s, p in seen if "FROM crm_budget" in s and "hubspot:review" in str(p)]
    expiry_looks = [s for s, _ in seen if "proposals.expires_at <" in s]
    assert len(pace_looks) <= 2, pace_looks
    ticks = elapsed / server.gate.reviews.interval  # one look per interval, and one to start
    assert ticks + 2 < 29, f"the burst took {elapsed:.1f}s: too slow to tell wakes from ticks"
    assert len(expiry_looks) <= ticks + 2, (len(expiry_looks), elapsed)


async def test_reviews_claimed_together_share_their_crm_reads(make_server):
    server = await make_server(review_budget_share=0.02)  # the default
    hubspot = server.crm_stand_in
    server.slack.message_rate = None  # twenty DMs to one person: not what this test is about
    for i in range(20):
        hubspot.add_record("deals", {"dealname": f"R{i}", "dealstage": "appointmentscheduled", "hubspot_owner_id": "101"}, record_id=f"610{i:02d}")
    reads = hubspot.count("/crm/v3/objects/deals/batch/read")
    bodies = await asyncio.gather(
        *[server.propose({"object": "deals", "record_id": f"610{i:02d}", "changes": {"dealstage": "qualifiedtobuy"}}) for i in range(20)]
    )
    owner_lookups = hubspot.count("/crm/v3/owners/")
    for _, body in bodies:
        await review_dm(server, AVA, body["id"])
    # Routing is paced (REVIEW_BUDGET_SHARE): the first pass goes at once, the reviews that
    # arrive while the next one waits are read together, each record with its owner field.
    assert hubspot.count("/crm/v3/objects/deals/batch/read") - reads <= 3
    assert hubspot.count("/crm/v3/owners/") - owner_lookups == 1  # owner 101, looked up once

    # A person is trusted for OWNER_TTL seconds, then asked for again.
    from bot.engine.review import OWNER_TTL

    reviews = server.gate.reviews
    started = reviews._clock()
    reviews._clock = lambda: started + OWNER_TTL + 1
    hubspot.add_record("deals", {"dealname": "Later", "dealstage": "appointmentscheduled", "hubspot_owner_id": "101"}, record_id="61099")
    _, later = await server.propose({"object": "deals", "record_id": "61099", "changes": {"dealstage": "qualifiedtobuy"}})
    await review_dm(server, AVA, later["id"])
    assert hubspot.count("/crm/v3/owners/") - owner_lookups == 2
