"""Replicas and batching: two real server processes on one PostgreSQL database behave as one,
and a batch with one bad record writes the others."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import drop_pg_database, fresh_pg_database
from helpers import eventually, free_port, run_cli, start_server

from bot.sandbox import seed

ROOT = Path(__file__).resolve().parent.parent


async def cli(env: dict[str, str], *args: str) -> str:
    code, out, err = await run_cli(env, *args)
    assert code == 0, err
    return out


@pytest.fixture
async def pg_url():
    url = await fresh_pg_database()
    yield url
    await drop_pg_database(url)


async def test_two_replicas_commit_and_decide_exactly_once(pg_url, hubspot, slack, tmp_path):
    records = [f"{30000 + i}" for i in range(1600)]
    for record_id in records:
        hubspot.add_record("deals", {"dealname": f"Deal {record_id}", "description": "", "dealstage": "appointmentscheduled", "hubspot_owner_id": "101"}, record_id=record_id)
    slack.message_rate = None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "HUBSPOT_", "CRM", "DATABASE_URL", "TIERS_FILE"))}
    env.update(
        CRM="hubspot",
        HUBSPOT_ACCESS_TOKEN=hubspot.token,
        HUBSPOT_API_URL=hubspot.url,
        SLACK_BOT_TOKEN=slack.bot_token,
        SLACK_SIGNING_SECRET=slack.signing_secret,
        SLACK_API_URL=slack.api_url,
        SLACK_ALERTS_CHANNEL=seed.ALERTS_CHANNEL,
        SLACK_OPS_USERS=seed.OPS_USER.slack_id,
        DATABASE_URL=pg_url,
        TIERS_FILE=str(ROOT / "tiers.yaml"),
        JOB_INTERVAL="200ms",
        CRM_RATE_LIMIT="1000",
        LOG_LEVEL="WARNING",
    )
    key = (await cli(env, "agents", "add", "replica-test")).strip().splitlines()[-1]
    ports = [free_port(), free_port()]
    servers = [await start_server(env, port, tmp_path) for port in ports]
    try:
        # 2,000 mixed proposals spread over both replicas: 1,600 autonomous writes, 300 reviewed
        # stage moves, 100 blocked amount changes; each sent twice (a retry after a timeout).
        bodies: list[tuple[str, dict[str, Any]]] = []
        for i, record_id in enumerate(records):
            bodies.append((f"auto-{i}", {"object": "deals", "record_id": record_id, "changes": {"description": f"v{i}"}}))
        for i in range(300):
            bodies.append((f"review-{i}", {"object": "deals", "record_id": records[i], "changes": {"dealstage": "qualifiedtobuy"}}))
        for i in range(100):
            bodies.append((f"block-{i}", {"object": "deals", "record_id": records[i], "changes": {"amount": i}}))
        random.Random(7).shuffle(bodies)
        answers: dict[str, str] = {}
        semaphore = asyncio.Semaphore(64)

        async def send(http: aiohttp.ClientSession, n: int, idem: str, body: dict[str, Any]) -> None:
            async with semaphore:
                for attempt in range(2):
                    port = ports[(n + attempt) % 2]
                    async with http.post(
                        f"http://127.0.0.1:{port}/v1/proposals",
                        json=body,
                        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem},
                    ) as resp:
                        assert resp.status == 202, await resp.text()
                        data = await resp.json()
                    assert answers.setdefault(idem, data["id"]) == data["id"]  # same answer from either replica

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as http:
            await asyncio.gather(*(send(http, n, idem, body) for n, (idem, body) in enumerate(bodies)))
        assert len(answers) == 2000

        # Every autonomous write lands exactly once.
        def all_written() -> bool:
            return all(hubspot.value("deals", r, "description") == f"v{i}" for i, r in enumerate(records))

        await eventually(all_written, timeout=120, what="1,600 writes committed")
        for i, record_id in enumerate(records):
            writes = [h for h in hubspot.history("deals", record_id, "description") if h["value"] == f"v{i}"]
            assert len(writes) == 1, (record_id, writes)

        # Reviews: concurrent Approve clicks delivered to both replicas decide each review once.
        review_ids = {answers[f"review-{i}"] for i in range(300)}

        def routed() -> list[dict[str, Any]]:
            channel = slack.dm_channel("U0AVA")
            return [m for m in slack.messages(channel) if any(pid in str(m.get("blocks")) for pid in review_ids)]

        await eventually(lambda: len(routed()) >= 300, timeout=120, what="300 review DMs")
        assert len(routed()) == 300  # one DM per proposal, not one per replica
        messages = routed()[:40]
        channel = slack.dm_channel("U0AVA")

        async def click(n: int, message: dict[str, Any]) -> None:
            slack.events_url = f"http://127.0.0.1:{ports[n % 2]}/slack/events"
            await slack.click("U0AVA", channel, message["ts"], "review_approve")

        await asyncio.gather(*(click(n, m) for m in messages for n in range(4)))
        import asyncpg

        dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            async def decided() -> bool:
                n = await conn.fetchval("SELECT count(*) FROM proposals WHERE review_state = 'decided'")
                return n == 40

            await eventually(decided, timeout=60, what="40 decisions")
            events = await conn.fetchval("SELECT count(*) FROM audit_events WHERE kind = 'review.decided'")
            assert events == 40
            async def settled() -> bool:
                return await conn.fetchval(
                    "SELECT count(*) FROM changes WHERE status IN ('queued', 'committing')"
                ) == 0

            await eventually(settled, timeout=60, what="approved changes committed")
            committed = await conn.fetchval("SELECT count(*) FROM changes WHERE status = 'committed'")
            failed = await conn.fetchval("SELECT count(*) FROM changes WHERE status IN ('failed', 'conflict')")
            blocked = await conn.fetchval("SELECT count(*) FROM changes WHERE status = 'blocked'")
            assert (committed, blocked) == (1600 + 40, 100)
            assert failed == 0
            chain_ok = await conn.fetchval(
                "SELECT bool_and(e.prev_hash = p.hash) FROM audit_events e JOIN audit_events p ON p.id = "
                "(SELECT max(id) FROM audit_events q WHERE q.id < e.id)"
            )
            assert chain_ok  # two replicas appended to one unbroken chain
        finally:
            await conn.close()
        # 100 blocked attempts: every alert delivered, in digests (never one message per alert).
        await eventually(
            lambda: sum(m["text"].count("Blocked") for m in slack.messages(seed.ALERTS_CHANNEL)) == 100,
            timeout=60,
            what="100 alerts",
        )
        posts = slack.messages(seed.ALERTS_CHANNEL)
        assert len(posts) < 100
        # The two replicas take turns on the channel: Slack's one message per second holds for
        # both together, not for each of them.
        times = sorted(float(m["ts"]) for m in posts)
        assert min(b - a for a, b in itertools.pairwise(times)) >= 1.0, times
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            await server.wait()


async def test_a_batch_with_one_bad_record_writes_the_others(make_server):
    server = await make_server()
    hubspot = server.crm_stand_in
    for i in range(4):
        hubspot.add_record("companies", {"name": f"Co {i}", "city": "Old"}, record_id=f"710{i}")
    server.gate.schemas.invalidate()  # a value only the CRM can refuse: intake has no schema now
    bodies = [
        {"object": "companies", "record_id": f"710{i}", "changes": {"industry": "NOT_AN_INDUSTRY"} if i == 2 else {"city": f"New {i}"}}
        for i in range(4)
    ]
    answers = await asyncio.gather(*(server.propose(b) for b in bodies))
    details = [await server.settled(a["id"]) for _, a in answers]
    statuses = [d["changes"][0]["status"] for d in details]
    assert statuses == ["committed", "committed", "failed", "committed"]
    assert "NOT_AN_INDUSTRY" in details[2]["changes"][0]["error"]
    assert [hubspot.value("companies", f"710{i}", "city") for i in range(4)] == ["New 0", "New 1", "Old", "New 3"]
