"""The composition root: builds the gate from `Settings` and runs it.

In sandbox mode (no CRM credentials, or `serve --sandbox`) the HubSpot stand-in runs in-process,
seeded with demo data, and the real HubSpot adapter talks to it over HTTP. Without a Slack token
the Slack stand-in runs in-process too and the real Slack client points at it. Same code paths,
same wire, no accounts needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import secrets
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.config import Settings
from bot.engine.alerts import AlertDispatcher
from bot.engine.committer import Committer
from bot.engine.intake import Intake
from bot.engine.ports import CRM
from bot.ledger.db import make_engine, upgrade
from bot.ledger.repo import Ledger
from bot.policy import Policy, load_policy
from bot.sandbox import seed

log = logging.getLogger("bot")
SANDBOX_KEY_FILE = Path(".sandbox-agent-key")


def replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class Gate:
    settings: Settings
    policy: Policy
    ledger: Ledger
    crm: CRM
    intake: Intake
    committer: Committer
    alerts: AlertDispatcher
    auth: Any = None
    stand_ins: list[Any] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    slack_client: Any = None

    def start_jobs(self) -> None:
        self.tasks.append(
            asyncio.create_task(self.committer.run(self.stop_event), name="committer")
        )
        self.tasks.append(asyncio.create_task(self.alerts.run(self.stop_event), name="alerts"))

    async def close(self) -> None:
        self.stop_event.set()
        self.committer.wake()
        self.alerts.wake()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        await self.crm.close()
        await self.ledger.close()
        for stand_in in self.stand_ins:
            await stand_in.stop()


async def build_crm(settings: Settings, stand_ins: list[Any]) -> CRM:
    if settings.crm == "hubspot":
        from bot.crm.hubspot import HubSpotCRM

        assert settings.hubspot_access_token is not None
        return HubSpotCRM(
            settings.hubspot_access_token.get_secret_value(),
            settings.hubspot_api_url,
            max_workers=settings.crm_max_workers,
            portal_id=settings.hubspot_portal_id,
        )
    if settings.crm == "salesforce":
        from bot.crm.salesforce import SalesforceCRM

        secret = lambda s: s.get_secret_value() if s else None  # noqa: E731
        return SalesforceCRM(
            settings.salesforce_instance_url or "",
            secret(settings.salesforce_access_token),
            username=settings.salesforce_username,
            password=secret(settings.salesforce_password),
            security_token=secret(settings.salesforce_security_token),
            domain=settings.salesforce_domain,
            version=settings.salesforce_api_version,
            max_workers=settings.crm_max_workers,
        )
    from bot.crm.hubspot import HubSpotCRM
    from bot.sandbox.hubspot import HubSpotStandIn

    token = "sandbox-hubspot-" + secrets.token_hex(8)
    hubspot = await HubSpotStandIn(token=token, seed=True).start()
    stand_ins.append(hubspot)
    return HubSpotCRM(token, hubspot.url, max_workers=settings.crm_max_workers, portal_id="sandbox")


async def build_slack(settings: Settings, stand_ins: list[Any]) -> tuple[Any, str]:
    """The Slack Web API client and the alerts channel."""
    from bot.slack.client import make_client

    if settings.slack_sandbox:
        from bot.sandbox.slack import SlackStandIn

        slack = SlackStandIn(bot_token="xoxb-sandbox-" + secrets.token_hex(8))
        await slack.start()
        stand_ins.append(slack)
        return make_client(
            slack.bot_token, slack.api_url
        ), settings.slack_alerts_channel or seed.ALERTS_CHANNEL
    assert settings.slack_bot_token is not None and settings.slack_alerts_channel is not None
    return (
        make_client(settings.slack_bot_token.get_secret_value(), settings.slack_api_url),
        settings.slack_alerts_channel,
    )


async def build_gate(
    settings: Settings, *, policy: Policy | None = None, migrate: bool = True
) -> Gate:
    from bot.slack.notifier import SlackNotifier
    from bot.web import AgentAuth

    policy = policy or load_policy(settings.tiers_file)
    engine = make_engine(settings.database_url)
    if migrate:
        await upgrade(engine)
    ledger = Ledger(engine)
    stand_ins: list[Any] = []
    crm = await build_crm(settings, stand_ins)
    slack_client, alerts_channel = await build_slack(settings, stand_ins)
    owner = replica_id()
    committer = Committer(
        ledger,
        crm,
        owner=owner,
        batch_size=settings.commit_batch_size,
        linger=settings.commit_linger,
        lease=settings.lease_duration,
        interval=settings.job_interval,
    )
    alerts = AlertDispatcher(ledger, SlackNotifier(slack_client, alerts_channel), owner=owner)
    committer.on_alert = alerts.wake
    intake = Intake(
        ledger,
        policy,
        settings.policy_crm,
        max_changes=settings.max_changes_per_proposal,
        on_queued=committer.wake,
        on_alert=alerts.wake,
    )
    gate = Gate(
        settings=settings,
        policy=policy,
        ledger=ledger,
        crm=crm,
        intake=intake,
        committer=committer,
        alerts=alerts,
        stand_ins=stand_ins,
        slack_client=slack_client,
    )
    gate.auth = AgentAuth(gate)
    return gate


def sandbox_banner(settings: Settings, gate: Gate) -> list[str]:
    lines = []
    if settings.crm_sandbox:
        lines.append(
            "SANDBOX MODE: the CRM is an in-process HubSpot stand-in seeded with demo deals, "
            "contacts, companies and owners. Nothing reaches a real CRM."
        )
        lines.append(
            "  To use a real CRM set CRM=hubspot and HUBSPOT_ACCESS_TOKEN, or CRM=salesforce with "
            "SALESFORCE_INSTANCE_URL and SALESFORCE_ACCESS_TOKEN."
        )
    if settings.slack_sandbox:
        lines.append(
            "SANDBOX MODE: Slack is an in-process stand-in; no message reaches a real workspace."
        )
        lines.append(
            "  To use real Slack install the app from manifest.yml and set SLACK_BOT_TOKEN, "
            "SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN for Socket Mode) and SLACK_ALERTS_CHANNEL."
        )
    return lines


async def serve(settings: Settings) -> None:
    from bot.web import build_web_app

    gate = await build_gate(settings)
    app = build_web_app(gate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    gate.start_jobs()
    for line in sandbox_banner(settings, gate):
        log.warning(line)
    if settings.crm_sandbox:
        _, key = await gate.ledger.create_agent("sandbox-agent", replace=True)
        SANDBOX_KEY_FILE.write_text(key + "\n")
        SANDBOX_KEY_FILE.chmod(0o600)
        log.warning("  A sandbox agent key (new at each start) is in %s. Try:", SANDBOX_KEY_FILE)
        log.warning(
            '  curl -s localhost:%d/v1/proposals -H "Authorization: Bearer $(cat %s)" '
            "-H 'Idempotency-Key: try-1' -H 'Content-Type: application/json' "
            """-d '{"object":"deals","record_id":"9001","changes":{"description":"Renewal confirmed"}}'""",
            settings.port,
            SANDBOX_KEY_FILE,
        )
    log.info(
        "crm gate listening on http://%s:%d (crm=%s, database=%s)",
        settings.host,
        settings.port,
        settings.crm,
        "sqlite" if settings.is_sqlite else "postgresql",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
        await gate.close()
