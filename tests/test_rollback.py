"""/crm-rollback, the rollback CLI, crash recovery and the audit trail, end to end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    AVA,
    OPS,
    OUTSIDER,
    action_ids,
    change_status,
    eventually,
    free_port,
    message_text,
    propose_stage,
    review_dm,
    run_cli,
    start_server,
)
from sqlalchemy import update

from bot.engine.rollback import TargetError
from bot.ledger.repo import utcnow
from bot.ledger.tables import changes
from bot.sandbox import seed

ROOT = Path(__file__).resolve().parent.parent


async def commit(server, record_id: str, field: str, value: Any, **extra) -> dict[str, Any]:
    status, body = await server.propose({"object": "deals", "record_id": record_id, "changes": {field: value}, **extra})
    assert status == 202, body
    detail = await server.settled(body["id"])
    assert detail["changes"][0]["status"] == "committed", detail
    return detail


async def slash(server, user: str, text: str) -> None:
    await server.slack.command(user, "/crm-rollback", text)


def ephemeral_with(server, user: str, wanted) -> dict[str, Any] | None:
    """The newest ephemeral of `user` that satisfies `wanted`."""
    return next((n for n in reversed(server.slack.ephemerals(user)) if wanted(n)), None)


async def preview_for(server, user: str, target: str) -> dict[str, Any]:
    await slash(server, user, target)
    return await eventually(
        lambda: ephemeral_with(server, user, lambda n: "rollback_confirm" in action_ids(n)),
        what="rollback preview with a Confirm button",
    )


async def test_ops_rolls_back_a_proposal_from_slack(server):
    hubspot, slack = server.crm_stand_in, server.slack
    detail = await commit(server, "9001", "description", "Agent's summary")
    note = await preview_for(server, OPS, detail["id"])
    text = message_text(note)
    assert "Agent" in text and "EMEA" not in text and "1 to revert" in text
    await slack.click(OPS, note["channel"], note["ts"], "rollback_confirm")
    await eventually(lambda: hubspot.value("deals", "9001", "description") == "Renewal of the platform licence, 3 years.", what="before-image restored")

    final = await eventually(
        lambda: ephemeral_with(server, OPS, lambda n: ":rewind: Rolled back" in message_text(n)),
        what="result summary",
    )
    assert "*1* reverted" in message_text(final)
    alert = await eventually(lambda: [m for m in slack.messages(seed.ALERTS_CHANNEL) if "rolled back" in m["text"]])
    assert len(alert) == 1 and f"<@{OPS}>" in alert[0]["text"]
    after = await server.proposal(detail["id"])
    compensation = after["changes"][1]
    assert compensation["kind"] == "compensation" and compensation["status"] == "committed"
    assert compensation["before"] == "Agent's summary"
    assert compensation["written"] == "Renewal of the platform licence, 3 years."


async def test_a_non_ops_user_is_refused_and_audited(server):
    detail = await commit(server, "9001", "description", "x")
    answer = await server.slack.command(OUTSIDER, "/crm-rollback", detail["id"])
    shown = json.dumps(answer) + json.dumps(server.slack.ephemerals(OUTSIDER))
    assert "Only ops" in shown
    assert server.crm_stand_in.value("deals", "9001", "description") == "x"
    refused = [e for e in await server.gate.ledger.audit_events() if e["kind"] == "rollback.refused"]
    assert len(refused) == 1 and refused[0]["actor"] == OUTSIDER


async def test_help_explains_the_targets(server):
    answer = await server.slack.command(OPS, "/crm-rollback", "help")
    assert "run:" in json.dumps(answer) and "agent:" in json.dumps(answer)


async def test_a_run_of_300_changes_is_reverted_in_batched_calls(make_server):
    server = await make_server()
    hubspot = server.crm_stand_in
    ids = [f"{20000 + i}" for i in range(300)]
    for record_id in ids:
        hubspot.add_record("deals", {"dealname": f"Deal {record_id}", "description": "original", "hubspot_owner_id": "101"}, record_id=record_id)
    bodies = await asyncio.gather(
        *[server.propose({"object": "deals", "record_id": r, "changes": {"description": "agent"}, "run_id": "run-300"}) for r in ids]
    )
    for _, body in bodies:
        await server.settled(body["id"], timeout=60)
    assert all(hubspot.value("deals", r, "description") == "agent" for r in ids)
    reads = hubspot.count("/crm/v3/objects/deals/batch/read")
    writes = hubspot.count("/crm/v3/objects/deals/batch/update")

    plan = await server.gate.rollbacks.preview("run:run-300", OPS)
    assert plan.count("revert") == 300
    assert await server.gate.rollbacks.confirm(plan.id, OPS) == 300
    status = await server.gate.rollbacks.wait(plan.id, within=60)
    assert status["reverted"] == 300 and status["failed"] == 0
    assert all(hubspot.value("deals", r, "description") == "original" for r in ids)
    read_calls = hubspot.count("/crm/v3/objects/deals/batch/read") - reads
    write_calls = hubspot.count("/crm/v3/objects/deals/batch/update") - writes
    # preview: 3 reads of 100; commit: 3 reads (before-images) and 3 writes of 100
    assert read_calls <= 6 and write_calls <= 3, (read_calls, write_calls)
    assert hubspot.count("/crm/v3/objects/deals/", method="PATCH") == 0  # never one by one


async def test_a_human_edit_is_a_conflict_left_alone_unless_forced(server):
    hubspot, slack = server.crm_stand_in, server.slack
    detail = await commit(server, "9003", "description", "agent text")
    hubspot.human_edit("deals", "9003", "description", "rep rewrote it")
    plan = await server.gate.rollbacks.preview(detail["id"], OPS)
    assert plan.count("conflict") == 1 and plan.count("revert") == 0
    assert await server.gate.rollbacks.confirm(plan.id, OPS) == 0
    status = await server.gate.rollbacks.wait(plan.id, within=10)
    assert status["conflicts"] == 1 and status["reverted"] == 0
    assert hubspot.value("deals", "9003", "description") == "rep rewrote it"

    # Through Slack, forcing takes a second confirmation.
    await slash(server, OPS, detail["id"])
    note = await eventually(
        lambda: ephemeral_with(server, OPS, lambda n: "rollback_include_conflicts" in action_ids(n))
    )
    assert "rollback_confirm" not in action_ids(note)  # nothing to revert without forcing
    await slack.click(OPS, note["channel"], note["ts"], "rollback_include_conflicts")
    second = await eventually(lambda: ephemeral_with(server, OPS, lambda n: "rollback_confirm_force" in action_ids(n)))
    await slack.click(OPS, second["channel"], second["ts"], "rollback_confirm_force")
    await eventually(lambda: hubspot.value("deals", "9003", "description") == "EMEA rollout, 400 seats.", what="forced restore")


async def test_rolling_back_a_rollback_restores_the_agents_value(server):
    hubspot = server.crm_stand_in
    detail = await commit(server, "9002", "description", "agent value")
    first = await server.gate.rollbacks.preview(detail["id"], OPS)
    await server.gate.rollbacks.confirm(first.id, OPS)
    assert (await server.gate.rollbacks.wait(first.id))["reverted"] == 1
    assert hubspot.value("deals", "9002", "description") in ("", None)
    undo = await server.gate.rollbacks.preview(first.id, OPS)
    assert undo.count("revert") == 1
    await server.gate.rollbacks.confirm(undo.id, OPS)
    assert (await server.gate.rollbacks.wait(undo.id))["reverted"] == 1
    assert hubspot.value("deals", "9002", "description") == "agent value"


async def test_the_same_rollback_twice_writes_nothing_the_second_time(server):
    hubspot = server.crm_stand_in
    detail = await commit(server, "9004", "description", "agent")
    plan = await server.gate.rollbacks.preview(detail["id"], OPS)
    assert await server.gate.rollbacks.confirm(plan.id, OPS) == 1
    assert await server.gate.rollbacks.confirm(plan.id, OPS) == 0  # a double click on Confirm
    await server.gate.rollbacks.wait(plan.id)
    writes = hubspot.count("/crm/v3/objects/deals/batch/update")
    with pytest.raises(TargetError, match="nothing to roll back"):
        await server.gate.rollbacks.preview(detail["id"], OPS)
    await asyncio.sleep(0.3)
    assert hubspot.count("/crm/v3/objects/deals/batch/update") == writes


async def test_a_note_the_agent_created_is_deleted(server):
    hubspot = server.crm_stand_in
    status, body = await server.propose(
        {"object": "deals", "record_id": "9001", "activities": [{"kind": "note", "body": "Wrong account!"}]}
    )
    detail = await server.settled(body["id"])
    note_id = detail["changes"][0]["activity_id"]
    plan = await server.gate.rollbacks.preview(body["id"], OPS)
    await server.gate.rollbacks.confirm(plan.id, OPS)
    assert (await server.gate.rollbacks.wait(plan.id))["reverted"] == 1
    assert next(a for a in hubspot.activities if a.id == note_id).archived


async def test_the_review_message_shows_who_rolled_it_back(server):
    slack = server.slack
    body = await propose_stage(server)
    channel, message = await review_dm(server, AVA, body["id"])
    await slack.click(AVA, channel, message["ts"], "review_approve")
    await change_status(server, body["id"], "committed")
    plan = await server.gate.rollbacks.preview(body["id"], OPS)
    await server.gate.rollbacks.confirm(plan.id, OPS)
    await server.gate.rollbacks.wait(plan.id)
    assert server.crm_stand_in.value("deals", "9001", "dealstage") == "qualifiedtobuy"
    await eventually(
        lambda: "rolled back" in message_text(slack.message(channel, message["ts"])).lower()
        and f"<@{OPS}>" in message_text(slack.message(channel, message["ts"])),
        what="review message says who rolled it back",
    )


# --- crash recovery ----------------------------------------------------------------------------


async def _set(server, change_id: str, **values) -> None:
    async with server.gate.ledger.engine.begin() as conn:
        await conn.execute(update(changes).where(changes.c.id == change_id).values(**values))


async def _interrupted(server, record_id: str, target: str, before: str) -> str:
    """A change left `committing` by a crashed replica, as the ledger would hold it."""
    status, body = await server.propose({"object": "deals", "record_id": record_id, "changes": {"dealstage": target}})
    change_id = body["changes"][0]["id"]
    assert body["changes"][0]["status"] == "pending_review"  # the committer leaves it alone
    await _set(
        server,
        change_id,
        status="committing",
        approved=target,
        decided_at=utcnow(),
        before=before,
        before_captured=True,
        lease_owner="dead-replica",
        lease_expires=utcnow() - timedelta(seconds=1),
    )
    server.gate.committer.wake()
    return body["id"]


async def test_recovery_finds_the_write_landed_and_does_not_repeat_it(server):
    hubspot = server.crm_stand_in
    hubspot.human_edit("deals", "9001", "dealstage", "closedwon")  # the write landed before the crash
    writes = hubspot.count("/crm/v3/objects/deals/batch/update")
    proposal_id = await _interrupted(server, "9001", "closedwon", before="qualifiedtobuy")
    detail = await server.settled(proposal_id)
    assert detail["changes"][0]["status"] == "committed"
    assert hubspot.count("/crm/v3/objects/deals/batch/update") == writes
    kinds = [e["kind"] for e in await server.gate.ledger.audit_events() if e["proposal_id"] == proposal_id]
    assert "change.recovered" in kinds


async def test_recovery_writes_again_when_the_crm_still_holds_the_before_image(server):
    hubspot = server.crm_stand_in
    proposal_id = await _interrupted(server, "9002", "closedwon", before="presentationscheduled")
    detail = await server.settled(proposal_id)
    assert detail["changes"][0]["status"] == "committed"
    assert hubspot.value("deals", "9002", "dealstage") == "closedwon"


async def test_recovery_finds_something_else_and_raises_a_conflict(server):
    hubspot = server.crm_stand_in
    hubspot.human_edit("deals", "9003", "dealstage", "closedlost")  # a person, during the outage
    proposal_id = await _interrupted(server, "9003", "closedwon", before="contractsent")
    detail = await server.settled(proposal_id)
    assert detail["changes"][0]["status"] == "conflict"
    assert hubspot.value("deals", "9003", "dealstage") == "closedlost"
    alerts = await eventually(lambda: [m for m in server.slack.messages(seed.ALERTS_CHANNEL) if "interrupted" in m["text"]])
    assert proposal_id in json.dumps(detail) and alerts


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    return await run_cli(env, *args)


@pytest.fixture
def cli_env(tmp_path, hubspot, slack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "HUBSPOT_", "SALESFORCE_", "CRM", "DATABASE_URL"))}
    env.update(
        CRM="hubspot",
        HUBSPOT_ACCESS_TOKEN=hubspot.token,
        HUBSPOT_API_URL=hubspot.url,
        SLACK_BOT_TOKEN=slack.bot_token,
        SLACK_SIGNING_SECRET="test-signing-secret",
        SLACK_API_URL=slack.api_url,
        SLACK_ALERTS_CHANNEL=seed.ALERTS_CHANNEL,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
        TIERS_FILE=str(ROOT / "tiers.yaml"),
        LEASE_DURATION="2s",
        JOB_INTERVAL="200ms",
    )
    return env


async def test_a_server_killed_mid_write_commits_exactly_once_after_restart(cli_env, hubspot, tmp_path):
    import aiohttp

    code, out, err = await _cli(cli_env, "agents", "add", "crash-test")
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    port = free_port()

    async def start():
        return await start_server(cli_env, port, tmp_path)

    server = await start()
    hubspot.faults.latency = 3.0
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{port}/v1/proposals",
            json={"object": "deals", "record_id": "9004", "changes": {"description": "written across a crash"}},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "crash-1"},
        ) as resp:
            body = await resp.json()
    change_id = body["changes"][0]["id"]
    db = sqlite3.connect(cli_env["DATABASE_URL"].split("///", 1)[1], timeout=30)

    def status() -> str:
        return db.execute("SELECT status FROM changes WHERE id = ?", (change_id,)).fetchone()[0]

    await eventually(lambda: status() == "committing", timeout=20, what="the write in flight")
    await asyncio.sleep(1.0)  # the batch update is now on the wire, delayed by the CRM
    server.send_signal(signal.SIGKILL)
    await server.wait()
    hubspot.faults.latency = 0.0
    await asyncio.sleep(2.5)  # whatever the CRM does with the orphaned request, it has done it
    assert status() == "committing"

    server = await start()
    try:
        await eventually(lambda: status() == "committed", timeout=30, what="recovery after restart")
    finally:
        server.send_signal(signal.SIGTERM)
        await server.wait()
    assert hubspot.value("deals", "9004", "description") == "written across a crash"
    written = [h for h in hubspot.history("deals", "9004", "description") if h["value"] == "written across a crash"]
    assert len(written) == 1, written  # never written twice
    db.close()


# --- the CLI -----------------------------------------------------------------------------------


def _budget_used(cli_env) -> int:
    """Requests paid for today from the shared CRM budget (the `crm_budget` table)."""
    db = sqlite3.connect(cli_env["DATABASE_URL"].split("///", 1)[1], timeout=30)
    try:
        row = db.execute("SELECT used_today FROM crm_budget WHERE name = 'hubspot'").fetchone()
    finally:
        db.close()
    return row[0] if row else 0


async def test_cli_rollback_dry_run_then_yes(make_server, cli_env):
    server = await make_server(database_url=cli_env["DATABASE_URL"])
    detail = await commit(server, "9001", "description", "cli target")
    code, out, err = await _cli(cli_env, "rollback", detail["id"], "--dry-run")
    assert code == 0, err
    assert "1 to revert" in out and "cli target" in out
    assert server.crm_stand_in.value("deals", "9001", "description") == "cli target"
    code, out, err = await _cli(cli_env, "rollback", detail["id"])  # no terminal, no --yes
    assert code == 2 and "--yes" in err
    requests, spent = len(server.crm_stand_in.calls), _budget_used(cli_env)
    code, out, err = await _cli(cli_env, "rollback", detail["id"], "--yes")
    assert code == 0, out + err
    assert "1 reverted" in out and "1/1 written" in err  # the progress bar
    assert server.crm_stand_in.value("deals", "9001", "description") == "Renewal of the platform licence, 3 years."
    # The CLI spends from the budget the servers share: every request it sent was paid for.
    assert len(server.crm_stand_in.calls) - requests == _budget_used(cli_env) - spent >= 2
    code, out, err = await _cli(cli_env, "rollback", detail["id"], "--yes")
    assert code == 2 and "nothing to roll back" in err


async def test_cli_rollback_with_yes_reads_each_record_once_and_still_leaves_conflicts_alone(make_server, cli_env):
    server = await make_server(database_url=cli_env["DATABASE_URL"])
    hubspot = server.crm_stand_in
    ids = [f"{30000 + i}" for i in range(150)]
    for record_id in ids:
        hubspot.add_record("deals", {"dealname": f"Deal {record_id}", "description": "original"}, record_id=record_id)
    bodies = await asyncio.gather(
        *[server.propose({"object": "deals", "record_id": r, "changes": {"description": "agent"}, "run_id": "run-150"}) for r in ids]
    )
    for _, body in bodies:
        await server.settled(body["id"], timeout=60)
    hubspot.human_edit("deals", ids[0], "description", "a person's words")  # a conflict
    hubspot.human_edit("deals", ids[1], "description", "original")  # reverted by hand already
    reads = hubspot.count("/crm/v3/objects/deals/batch/read")
    writes = hubspot.count("/crm/v3/objects/deals/batch/update")

    code, out, err = await _cli(cli_env, "rollback", "run:run-150", "--yes")

    assert code == 1, out + err  # a conflict remains
    assert "150 to revert; each is checked against the CRM right before it is written" in out
    assert "149 reverted, 1 conflict(s) left alone, 0 failed" in out
    assert hubspot.value("deals", ids[0], "description") == "a person's words"
    assert {hubspot.value("deals", r, "description") for r in ids[1:]} == {"original"}
    # No preview read: the committer's read before writing is the only one (two batches of
    # 100 at most, or three when the server's committer took a share).
    read_calls = hubspot.count("/crm/v3/objects/deals/batch/read") - reads
    write_calls = hubspot.count("/crm/v3/objects/deals/batch/update") - writes
    assert read_calls <= 3 and write_calls <= 3, (read_calls, write_calls)


async def test_cli_rollback_exit_code_says_conflicts_remain(make_server, cli_env):
    server = await make_server(database_url=cli_env["DATABASE_URL"])
    detail = await commit(server, "9002", "description", "agent")
    server.crm_stand_in.human_edit("deals", "9002", "description", "human")
    code, out, err = await _cli(cli_env, "rollback", detail["id"], "--yes")
    assert code == 1 and "1 conflict" in out
    assert server.crm_stand_in.value("deals", "9002", "description") == "human"
    code, out, err = await _cli(cli_env, "rollback", detail["id"], "--yes", "--include-conflicts")
    assert code == 0, out + err
    assert server.crm_stand_in.value("deals", "9002", "description") in ("", None)


async def test_audit_verify_and_export(make_server, cli_env, tmp_path):
    server = await make_server(database_url=cli_env["DATABASE_URL"])
    await commit(server, "9001", "description", "audited")
    code, out, _ = await _cli(cli_env, "audit", "verify")
    assert code == 0 and "intact" in out
    code, out, _ = await _cli(cli_env, "audit", "export", "--format", "jsonl")
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["kind"] for e in events][-2:] == ["change.committing", "change.committed"]
    assert all(e["prev_hash"] == p["hash"] for p, e in zip(events, events[1:], strict=False))
    target = tmp_path / "trail.csv"
    code, _, err = await _cli(cli_env, "audit", "export", "--format", "csv", "--since", "1h", "-o", str(target))
    assert code == 0 and f"{len(events)} event(s)" in err
    assert target.read_text().splitlines()[0].startswith("id,at,actor,kind")

    db = sqlite3.connect(cli_env["DATABASE_URL"].split("///", 1)[1], timeout=30)
    db.execute("UPDATE audit_events SET data = '{\"written\": \"something else\"}' WHERE kind = 'change.committed'")
    db.commit()
    db.close()
    code, out, _ = await _cli(cli_env, "audit", "verify")
    broken = next(e for e in events if e["kind"] == "change.committed")
    assert code == 1 and f"BROKEN at event #{broken['id']}" in out
