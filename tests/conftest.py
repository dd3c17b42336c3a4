"""Shared fixtures: databases (SQLite and PostgreSQL), stand-ins, and a running gate server.

PostgreSQL tests run against 127.0.0.1:5432 (database `test`, user `postgres`). In CI
(`CI=true`) they are mandatory; elsewhere they skip with a message when no server answers.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.app import Gate, build_gate, start_slack
from bot.config import Settings, load_settings
from bot.ledger.db import make_engine, upgrade
from bot.ledger.repo import Ledger
from bot.sandbox import seed

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
SIGNING_SECRET = "test-signing-secret"
CALLBACK_SECRET = "test-callback-secret"


async def _pg_available() -> str | None:
    import asyncpg

    dsn = PG_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://")
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn), 5)
    except Exception as exc:  # any failure to connect means: no server here
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def fresh_pg_database() -> str:
    """A new, empty PostgreSQL database; returns its SQLAlchemy URL."""
    import asyncpg

    problem = await _pg_available()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI but did not answer: {problem}")
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432 ({problem})")
    name = f"gate_test_{uuid.uuid4().hex[:12]}"
    dsn = PG_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


async def drop_pg_database(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]
    dsn = PG_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    url = await fresh_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[Ledger]:
    engine = make_engine(database_url)
    await upgrade(engine)
    ledger = Ledger(engine)
    try:
        yield ledger
    finally:
        await ledger.close()


async def _serving(stand_in: Any) -> AsyncIterator[Any]:
    await stand_in.start()
    try:
        yield stand_in
    finally:
        await stand_in.stop()


@pytest.fixture
async def slack() -> AsyncIterator[Any]:
    from bot.sandbox.slack import SlackStandIn

    async for stand_in in _serving(SlackStandIn(bot_token="xoxb-test-token", signing_secret=SIGNING_SECRET)):
        yield stand_in


@pytest.fixture
async def hubspot() -> AsyncIterator[Any]:
    from bot.sandbox.hubspot import HubSpotStandIn

    async for stand_in in _serving(HubSpotStandIn(token="hs-test-token", seed=True)):
        yield stand_in


@pytest.fixture
async def salesforce() -> AsyncIterator[Any]:
    from bot.sandbox.salesforce import SalesforceStandIn

    async for stand_in in _serving(SalesforceStandIn(token="sf-test-token", seed=True)):
        yield stand_in


@dataclass
class Running:
    """A gate server on 127.0.0.1, with an agent key and an HTTP session to drive it."""

    gate: Gate
    url: str
    key: str
    http: aiohttp.ClientSession
    crm_stand_in: Any
    slack: Any

    def headers(self, idempotency_key: str | None = None, key: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {key or self.key}"}
        if idempotency_key is not None:
            h["Idempotency-Key"] = idempotency_key
        return h

    async def propose(self, body: Any, key: str | None = None) -> tuple[int, dict[str, Any]]:
        async with self.http.post(
            f"{self.url}/v1/proposals", json=body, headers=self.headers(key or uuid.uuid4().hex)
        ) as resp:
            return resp.status, await resp.json()

    async def proposal(self, proposal_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/v1/proposals/{proposal_id}", headers=self.headers()) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def settled(self, proposal_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until no change of the proposal is queued or committing."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            detail = await self.proposal(proposal_id)
            if all(c["status"] not in ("queued", "committing") for c in detail["changes"]):
                return detail
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"proposal did not settle: {detail}")
            await asyncio.sleep(0.05)


def gate_settings(database_url: str, crm_stand_in: Any, slack: Any, **extra: Any) -> Settings:
    crm: dict[str, Any]
    if crm_stand_in.name == "salesforce" or type(crm_stand_in).__name__.startswith("Salesforce"):
        crm = {
            "crm": "salesforce",
            "salesforce_instance_url": crm_stand_in.url,
            "salesforce_access_token": crm_stand_in.token,
        }
    else:
        crm = {"crm": "hubspot", "hubspot_access_token": crm_stand_in.token, "hubspot_api_url": crm_stand_in.url}
    return load_settings(
        **crm,
        slack_bot_token=slack.bot_token,
        slack_signing_secret=extra.pop("slack_signing_secret", SIGNING_SECRET),
        slack_api_url=slack.api_url,
        slack_alerts_channel=seed.ALERTS_CHANNEL,
        database_url=database_url,
        tiers_file=extra.pop("tiers_file", ROOT / "tiers.yaml"),
        commit_linger="10ms",
        job_interval="200ms",
        # Tests take one step at a time and wait for it; pacing has tests of its own.
        commit_budget_share=extra.pop("commit_budget_share", 1.0),
        review_budget_share=extra.pop("review_budget_share", 1.0),
        slack_ops_users=extra.pop("slack_ops_users", seed.OPS_USER.slack_id),
        callback_signing_secret=extra.pop("callback_signing_secret", CALLBACK_SECRET),
        **extra,
    )


async def start_gate(settings: Settings, crm_stand_in: Any, slack: Any) -> tuple[Running, web.AppRunner]:
    from bot.web import build_web_app

    gate = await build_gate(settings)
    runner = web.AppRunner(build_web_app(gate), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    slack.events_url = f"{url}/slack/events"
    await start_slack(gate, url)
    gate.start_jobs()
    _, key = await gate.ledger.create_agent("test-agent")
    http = aiohttp.ClientSession()
    return Running(gate, url, key, http, crm_stand_in, slack), runner


async def stop_gate(running: Running, runner: web.AppRunner) -> None:
    await running.http.close()
    await runner.cleanup()
    await running.gate.close()


@pytest.fixture
async def make_server(sqlite_url: str, hubspot: Any, slack: Any) -> AsyncIterator[Any]:
    """A factory for a gate on HubSpot (stand-in) and SQLite with extra settings."""
    started: list[tuple[Running, web.AppRunner]] = []

    async def make(**extra: Any) -> Running:
        url = extra.pop("database_url", sqlite_url)
        running, runner = await start_gate(gate_settings(url, hubspot, slack, **extra), hubspot, slack)
        started.append((running, runner))
        return running

    try:
        yield make
    finally:
        for running, runner in started:
            await stop_gate(running, runner)


@pytest.fixture
async def server(database_url: str, hubspot: Any, slack: Any) -> AsyncIterator[Running]:
    """The gate on HubSpot (stand-in), on SQLite and on PostgreSQL."""
    running, runner = await start_gate(gate_settings(database_url, hubspot, slack), hubspot, slack)
    try:
        yield running
    finally:
        await stop_gate(running, runner)


@pytest.fixture
async def sf_server(sqlite_url: str, salesforce: Any, slack: Any) -> AsyncIterator[Running]:
    """The gate on Salesforce (stand-in)."""
    running, runner = await start_gate(gate_settings(sqlite_url, salesforce, slack), salesforce, slack)
    try:
        yield running
    finally:
        await stop_gate(running, runner)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Tests run on the loop the service runs on (EVENT_LOOP, bot/loop.py): uvloop where it is
    installed; `EVENT_LOOP=asyncio make test` runs them on asyncio's own loop."""
    from bot.loop import loop_factory

    factory = loop_factory(os.environ.get("EVENT_LOOP", "auto").lower())
    return {"uvloop": factory} if factory is not None else {"asyncio": asyncio.new_event_loop}
