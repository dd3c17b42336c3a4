"""Shadow mode, the promotion report, live precision and drift alarms, /metrics, and the schema
checks, end to end against the HubSpot stand-in."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import AVA, eventually, free_port, propose_stage, review_dm
from prometheus_client.parser import text_string_to_metric_families

from bot.engine.shadow import judge, wilson
from bot.policy import parse_policy
from bot.sandbox import seed

ROOT = Path(__file__).resolve().parent.parent
SHADOW_TIERS = """
version: 1
hubspot:
  deals:
    owner_field: hubspot_owner_id
    name_field: dealname
    fields:
      description: autonomous
      dealstage: {tier: reviewed, mode: shadow, promotion: {min_samples: 4, min_precision: 0.5}}
      hs_next_step: {tier: reviewed, mode: shadow, promotion: {min_samples: 3, min_precision: 0.9}}
      amount: never_autonomous
"""


@pytest.fixture
async def shadow_server(make_server, tmp_path):
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(SHADOW_TIERS)
    return await make_server(tiers_file=tiers)


async def shadow_propose(server, record_id: str, field: str, value: str) -> str:
    status, body = await server.propose({"object": "deals", "record_id": record_id, "changes": {field: value}})
    assert status == 202, body
    assert body["changes"][0]["status"] == "shadowed", body
    return body["id"]


async def captured(server, proposal_id: str) -> bool:
    row = await server.gate.ledger.proposal(proposal_id)
    return bool(row["changes"][0]["before_captured"])


async def test_shadowed_proposals_never_reach_the_crm_and_log_the_current_value(shadow_server):
    server, hubspot, slack = shadow_server, shadow_server.crm_stand_in, shadow_server.slack
    writes = hubspot.count("/crm/v3/objects/deals/batch/update") + hubspot.count("/crm/v3/objects/deals/", method="PATCH")
    pid = await shadow_propose(server, "9001", "dealstage", "closedwon")
    await eventually(lambda: captured(server, pid), what="the current value captured")
    detail = await server.proposal(pid)
    assert detail["changes"][0]["before"] == "qualifiedtobuy" and detail["changes"][0]["written"] is None
    await asyncio.sleep(0.5)
    assert hubspot.value("deals", "9001", "dealstage") == "qualifiedtobuy"
    assert hubspot.count("/crm/v3/objects/deals/batch/update") + hubspot.count("/crm/v3/objects/deals/", method="PATCH") == writes
    assert slack.api_calls("chat.postMessage") == 0  # no review was sent


async def test_evaluation_and_the_promotion_report(shadow_server):
    server, hubspot = shadow_server, shadow_server.crm_stand_in
    for i in range(6):
        hubspot.add_record("deals", {"dealname": f"S{i}", "dealstage": "appointmentscheduled", "hubspot_owner_id": "101"}, record_id=f"800{i}")
    # dealstage: 3 agreed, 1 disagreed, 2 unchanged; hs_next_step: 1 agreed (below its min samples)
    ids = [await shadow_propose(server, f"800{i}", "dealstage", "contractsent") for i in range(6)]
    ids.append(await shadow_propose(server, "8000", "hs_next_step", "Call the CFO"))
    for pid in ids:
        await eventually(lambda pid=pid: captured(server, pid))
    for i in range(3):
        hubspot.human_edit("deals", f"800{i}", "dealstage", "contractsent")
    hubspot.human_edit("deals", "8003", "dealstage", "closedlost")
    hubspot.human_edit("deals", "8000", "hs_next_step", "Call the CFO")
    assert await server.gate.shadow.evaluate() == 0  # the window has not passed
    assert await server.gate.shadow.evaluate(ignore_delay=True) == 7
    assert await server.gate.shadow.evaluate(ignore_delay=True) == 0  # judged once

    async with server.http.get(f"{server.url}/v1/shadow/report?since=1d", headers=server.headers()) as resp:
        assert resp.status == 200
        report = await resp.json()
    stage = next(f for f in report["fields"] if f["field"] == "dealstage")
    assert (stage["proposals"], stage["agreed"], stage["disagreed"], stage["unchanged"]) == (6, 3, 1, 2)
    assert stage["precision"] == 0.75
    low, high = wilson(3, 4)
    assert stage["ci_low"] == pytest.approx(low) and stage["ci_high"] == pytest.approx(high)
    assert stage["promotable"] is False and "lower bound" in stage["verdict"]  # 0.30 < 0.5
    step = next(f for f in report["fields"] if f["field"] == "hs_next_step")
    assert (step["agreed"], step["promotable"]) == (1, False) and "1 judged proposal(s) of the 3" in step["verdict"]
    assert report["promotable"] == []
    async with server.http.get(f"{server.url}/v1/shadow/report") as resp:
        assert resp.status == 401


def test_judging_by_history_counts_only_peoples_edits():
    from datetime import UTC, datetime, timedelta

    from bot.engine.ports import FieldChange

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    agent_write = FieldChange("x", t0 + timedelta(hours=1), "integration", None)
    person = FieldChange("y", t0 + timedelta(hours=2), "human", "7")
    assert judge("a", "y", [person, agent_write], "y", t0) == ("agreed", "y", "history")
    assert judge("a", "x", [person, agent_write], "y", t0) == ("disagreed", "y", "history")
    assert judge("a", "x", [agent_write], "x", t0)[0] == "unchanged"  # only an integration wrote
    assert judge("a", "x", [], "a", t0) == ("unchanged", "a", "current")
    assert judge("a", "x", [], "x", t0) == ("agreed", "x", "current")


def test_wilson_interval():
    low, high = wilson(30, 30)
    assert 0.88 < low < 0.89 and high == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)


async def test_promotion_passes_with_enough_agreement(make_server, tmp_path):
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(SHADOW_TIERS.replace("min_samples: 4, min_precision: 0.5", "min_samples: 5, min_precision: 0.5"))
    server = await make_server(tiers_file=tiers)
    hubspot = server.crm_stand_in
    ids = []
    for i in range(8):
        hubspot.add_record("deals", {"dealname": f"P{i}", "dealstage": "appointmentscheduled", "hubspot_owner_id": "101"}, record_id=f"810{i}")
        ids.append(await shadow_propose(server, f"810{i}", "dealstage", "qualifiedtobuy"))
    for pid in ids:
        await eventually(lambda pid=pid: captured(server, pid))
    for i in range(8):
        hubspot.human_edit("deals", f"810{i}", "dealstage", "qualifiedtobuy")
    await server.gate.shadow.evaluate(ignore_delay=True)
    code, out, _ = await run_cli(server, "shadow", "report", "--since", "1d")
    assert code == 0
    assert "deals.dealstage" in out and "May be promoted to live: deals.dealstage" in out


async def test_shadow_all_switch(make_server):
    server = await make_server(shadow_all=True)
    status, body = await server.propose({"object": "deals", "record_id": "9001", "changes": {"description": "x", "amount": 5}})
    assert {c["field"]: c["status"] for c in body["changes"]} == {"description": "shadowed", "amount": "shadowed"}


# --- live precision and drift -------------------------------------------------------------------


async def test_a_burst_of_rejections_raises_exactly_one_drift_alert(make_server):
    server = await make_server(drift_min_events=5, drift_rejection_rate=0.5)
    slack = server.slack
    for i in range(6):
        body = await propose_stage(server, "9001", ["contractsent", "closedwon", "closedlost", "qualifiedtobuy", "decisionmakerboughtin", "presentationscheduled"][i])
        await review_dm(server, AVA, body["id"])
        decision = await server.gate.reviews.decide(body["id"], AVA, "reject", reason=f"wrong stage {i}")
        assert decision.outcome == "decided"
    assert await server.gate.drift.check() == 1
    assert await server.gate.drift.check() == 0  # still drifting: no second alert
    alerts = await eventually(lambda: [m for m in slack.messages(seed.ALERTS_CHANNEL) if "Drift" in m["text"]])
    assert len(alerts) == 1
    text = alerts[0]["text"]
    assert "deals.dealstage" in text and "6 of 6" in text and "wrong stage" in text
    # the same figures as live precision in the report
    async with server.http.get(f"{server.url}/v1/shadow/report?since=1d", headers=server.headers()) as resp:
        live = (await resp.json())["live"]
    stage = next(r for r in live if r["field"] == "dealstage")
    assert (stage["decided"], stage["rejection_rate"], stage["approval_rate"]) == (6, 1.0, 0.0)


async def test_live_precision_counts_approved_edited_and_rejected_apart(make_server):
    server = await make_server()
    outcomes = []
    for stage, action in (
        ("contractsent", "approve"), ("presentationscheduled", "approve"),
        ("closedwon", "edit"), ("closedlost", "reject"),
    ):  # fmt: skip
        body = await propose_stage(server, "9001", stage)  # Ava's deal
        await review_dm(server, AVA, body["id"])
        change = body["changes"][0]["id"]
        edits = {change: "decisionmakerboughtin"} if action == "edit" else None
        decision = await server.gate.reviews.decide(body["id"], AVA, action, edits=edits)
        outcomes.append(decision.outcome)
    assert outcomes == ["decided"] * 4
    async with server.http.get(f"{server.url}/v1/shadow/report?since=1d", headers=server.headers()) as resp:
        live = (await resp.json())["live"]
    stage = next(r for r in live if r["field"] == "dealstage")
    assert stage["decided"] == 4
    assert (stage["approval_rate"], stage["edit_rate"], stage["rejection_rate"]) == (0.5, 0.25, 0.25)


async def test_live_rollback_rate(server):
    for record_id in ("9001", "9002"):
        status, body = await server.propose({"object": "deals", "record_id": record_id, "changes": {"description": "live"}})
        await server.settled(body["id"])
    plan = await server.gate.rollbacks.preview(body["id"], seed.OPS_USER.slack_id)
    await server.gate.rollbacks.confirm(plan.id, seed.OPS_USER.slack_id)
    await server.gate.rollbacks.wait(plan.id)
    async with server.http.get(f"{server.url}/v1/shadow/report?since=1h", headers=server.headers()) as resp:
        live = (await resp.json())["live"]
    description = next(r for r in live if r["field"] == "description")
    assert (description["committed"], description["rollback_rate"]) == (2, 0.5)


async def test_volume_alarm(make_server):
    server = await make_server(volume_alarm_share=0.4, volume_alarm_min_records=2)
    for record_id in ("9001", "9002"):
        status, body = await server.propose({"object": "deals", "record_id": record_id, "changes": {"description": "bulk"}})
        await server.settled(body["id"])
    assert await server.gate.drift.check() == 1  # 2 of 4 deals in an hour
    alerts = await eventually(lambda: [m for m in server.slack.messages(seed.ALERTS_CHANNEL) if "Volume alarm" in m["text"]])
    assert "2 of 4 deals" in alerts[0]["text"]
    assert await server.gate.drift.check() == 0


# --- metrics ------------------------------------------------------------------------------------


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_metrics_parse_and_match_the_ledger(server):
    await server.propose({"object": "deals", "record_id": "9001", "changes": {"description": "m1", "amount": 1}})
    _, body = await server.propose({"object": "deals", "record_id": "9002", "changes": {"description": "m2"}})
    await server.settled(body["id"])
    await server.gate.refresh_gauges()
    async with server.http.get(f"{server.url}/metrics") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        values = scrape(await resp.text())

    async with server.gate.ledger.engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT field, tier, status FROM changes")).all()
    received = {k: v for k, v in values.items() if k[0] == "gate_proposal_changes_total"}
    assert sum(received.values()) == len(rows) == 3
    assert values[("gate_proposal_changes_total", (("field", "amount"), ("object", "deals"), ("status", "blocked"), ("tier", "never_autonomous")))] == 1
    committed = sum(v for k, v in values.items() if k[0] == "gate_change_outcomes_total" and ("outcome", "committed") in k[1])
    assert committed == sum(1 for r in rows if r.status == "committed") == 2
    assert values[("gate_commit_latency_seconds_count", ())] == 2
    assert any(k[0] == "gate_crm_calls_total" and ("method", "update_records") in k[1] for k in values)
    assert any(k[0] == "gate_slack_calls_total" and ("method", "chat.postMessage") in k[1] for k in values)
    assert values[("gate_pending_reviews", ())] == 0


# --- schema checks ------------------------------------------------------------------------------


async def test_a_picklist_value_the_crm_does_not_know_is_refused_at_intake(server):
    await eventually(lambda: server.gate.schemas.peek("deals") is not None, what="schema cache warmed")
    status, body = await server.propose({"object": "deals", "record_id": "9001", "changes": {"dealstage": "almost-won"}})
    assert status == 202
    change = body["changes"][0]
    assert change["status"] == "refused"
    assert "almost-won" in change["reason"] and "contractsent" in change["reason"]
    await asyncio.sleep(0.3)
    assert server.slack.api_calls("chat.postMessage") == 0


async def test_a_field_that_disappears_raises_an_alert_and_its_proposals_are_refused(server):
    hubspot = server.crm_stand_in
    hubspot.rename_property("deals", "hs_next_step", "hs_next_step_v2")
    await server.gate.check_schema()
    await server.gate.check_schema()
    alerts = await eventually(lambda: [m for m in server.slack.messages(seed.ALERTS_CHANNEL) if "hs_next_step" in m["text"]])
    assert len(alerts) == 1 and "hs_next_step_v2" in alerts[0]["text"]
    status, body = await server.propose({"object": "deals", "record_id": "9001", "changes": {"hs_next_step": "x"}})
    assert body["changes"][0]["status"] == "refused" and "does not exist" in body["changes"][0]["reason"]


async def run_cli(server, *args: str) -> tuple[int, str, str]:
    settings = server.gate.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "HUBSPOT_", "CRM", "DATABASE_URL", "TIERS_FILE"))}
    env.update(
        CRM="hubspot",
        HUBSPOT_ACCESS_TOKEN=server.crm_stand_in.token,
        HUBSPOT_API_URL=server.crm_stand_in.url,
        SLACK_BOT_TOKEN=server.slack.bot_token,
        SLACK_SIGNING_SECRET="test-signing-secret",
        SLACK_ALERTS_CHANNEL=seed.ALERTS_CHANNEL,
        DATABASE_URL=settings.database_url,
        TIERS_FILE=str(settings.tiers_file),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, env=env, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_check_reports_a_renamed_field(make_server):
    server = await make_server()
    code, out, _ = await run_cli(server, "check")
    assert code == 0 and "OK" in out
    server.crm_stand_in.rename_property("deals", "dealstage", "deal_stage")
    code, out, _ = await run_cli(server, "check")
    assert code == 1
    assert "deals.dealstage" in out and "deal_stage" in out


def test_startup_stops_on_a_listed_field_the_crm_lacks(tmp_path):
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text("version: 1\nhubspot:\n  deals:\n    fields:\n      no_such_field: autonomous\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "HUBSPOT_", "CRM", "DATABASE_URL", "TIERS_FILE"))}
    env.update(TIERS_FILE=str(tiers), DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}", PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-m", "bot", "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no_such_field" in last and "SCHEMA_CHECK=lenient" in last
    assert "Traceback" not in proc.stderr




def test_policy_gate_defaults_reach_fields():
    policy = parse_policy(SHADOW_TIERS)
    assert policy.classify("hubspot", "deals", "dealstage").promotion.min_samples == 4
