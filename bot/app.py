"""The composition root: builds the gate from `Settings` and runs it.

In sandbox mode (no CRM credentials, or `serve --sandbox`) the HubSpot stand-in runs in-process,
seeded with demo data, and the real HubSpot adapter talks to it over HTTP. Without a Slack token
the Slack stand-in runs in-process too and the real Slack client points at it, with the same
signing secret the stand-in signs with. Same code paths, same wire, no accounts needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.config import Settings
from bot.engine.alerts import AlertDispatcher
from bot.engine.callbacks import CallbackSender
from bot.engine.committer import Committer
from bot.engine.intake import Intake
from bot.engine.ports import CRM
from bot.engine.review import Reviews
from bot.engine.rollback import Rollbacks
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
    reviews: Reviews
    rollbacks: Rollbacks
    callbacks: CallbackSender
    slack_client: Any
    bolt: Any
    auth: Any = None
    stand_ins: list[Any] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    socket_handler: Any = None

    @property
    def slack_stand_in(self) -> Any:
        return next((s for s in self.stand_ins if s.name == "slack"), None)

    def start_jobs(self) -> None:
        jobs: dict[str, Awaitable[None]] = {
            "committer": self.committer.run(self.stop_event),
            "alerts": self.alerts.run(self.stop_event),
            "reviews": self.reviews.run(self.stop_event),
            "callbacks": periodic(self.callbacks.run_once, self.stop_event, 1.0),
            "rollbacks": periodic(self.rollbacks.finish_settled, self.stop_event, 1.0),
        }
        for name, job in jobs.items():
            self.tasks.append(asyncio.create_task(job, name=name))  # type: ignore[arg-type]

    async def close(self) -> None:
        self.stop_event.set()
        for wake in (self.committer.wake, self.alerts.wake, self.reviews.wake):
            wake()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        if self.socket_handler is not None:
            await self.socket_handler.close_async()
        await self.callbacks.close()
        await self.crm.close()
        await self.ledger.close()
        for stand_in in self.stand_ins:
            await stand_in.stop()


async def periodic(job: Callable[[], Awaitable[int]], stop: asyncio.Event, interval: float) -> None:
    while not stop.is_set():
        try:
            while await job():
                pass
        except Exception:
            log.exception("%s failed; retrying", getattr(job, "__qualname__", job))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


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

        def secret(value: Any) -> str | None:
            return value.get_secret_value() if value else None

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


@dataclass(frozen=True)
class SlackSetup:
    client: Any
    alerts_channel: str
    signing_secret: str | None
    fallback_channel: str | None
    ops_users: list[str]


async def build_slack(settings: Settings, stand_ins: list[Any]) -> SlackSetup:
    from bot.slack.client import make_client

    if settings.slack_sandbox:
        from bot.sandbox.slack import SlackStandIn

        slack = SlackStandIn(
            bot_token="xoxb-sandbox-" + secrets.token_hex(8),
            signing_secret=secrets.token_hex(16),
        )
        await slack.start()
        stand_ins.append(slack)
        return SlackSetup(
            make_client(slack.bot_token, slack.api_url),
            settings.slack_alerts_channel or seed.ALERTS_CHANNEL,
            slack.signing_secret,
            settings.review_fallback_channel or seed.FALLBACK_CHANNEL,
            settings.slack_ops_users or [seed.OPS_USER.slack_id],
        )
    assert settings.slack_bot_token is not None and settings.slack_alerts_channel is not None
    return SlackSetup(
        make_client(settings.slack_bot_token.get_secret_value(), settings.slack_api_url),
        settings.slack_alerts_channel,
        settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None,
        settings.review_fallback_channel,
        settings.slack_ops_users,
    )


async def build_gate(settings: Settings, *, policy: Policy | None = None, migrate: bool = True) -> Gate:
    from bot.slack.app import build_bolt_app
    from bot.slack.channel import SlackChannel
    from bot.web import AgentAuth

    policy = policy or load_policy(settings.tiers_file)
    engine = make_engine(settings.database_url)
    if migrate:
        await upgrade(engine)
    ledger = Ledger(engine)
    stand_ins: list[Any] = []
    crm = await build_crm(settings, stand_ins)
    slack = await build_slack(settings, stand_ins)
    channel = SlackChannel(slack.client, slack.alerts_channel)
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
    alerts = AlertDispatcher(ledger, channel, owner=owner)
    reviews = Reviews(
        ledger,
        crm,
        policy,
        settings.policy_crm,
        channel,
        owner=owner,
        fallback_channel=slack.fallback_channel,
        user_map=settings.user_map,
        delegates=settings.slack_review_delegates,
        ops_users=slack.ops_users,
        ops_group=settings.slack_ops_usergroup,
        lease=settings.lease_duration,
        interval=settings.job_interval,
    )
    committer.on_alert = alerts.wake
    committer.on_outcome = reviews.wake
    reviews.on_alert = alerts.wake
    reviews.on_decided = committer.wake
    intake = Intake(
        ledger,
        policy,
        settings.policy_crm,
        max_changes=settings.max_changes_per_proposal,
        on_queued=committer.wake,
        on_alert=alerts.wake,
        on_review=reviews.wake,
        review_expiry=settings.review_expiry,
        reminder_before=settings.review_reminder,
        callbacks_enabled=settings.callback_signing_secret is not None or settings.crm_sandbox,
    )
    secret = (
        settings.callback_signing_secret.get_secret_value()
        if settings.callback_signing_secret
        else secrets.token_hex(16)  # sandbox only: intake refuses callbacks without a secret
    )
    gate = Gate(
        settings=settings,
        policy=policy,
        ledger=ledger,
        crm=crm,
        intake=intake,
        committer=committer,
        alerts=alerts,
        reviews=reviews,
        rollbacks=Rollbacks(ledger, crm, on_queued=committer.wake, on_alert=alerts.wake),
        callbacks=CallbackSender(ledger, secret, owner=owner),
        slack_client=slack.client,
        bolt=None,
        stand_ins=stand_ins,
    )
    gate.bolt = build_bolt_app(gate, slack.client, slack.signing_secret)
    gate.auth = AgentAuth(gate)
    return gate


async def start_slack(gate: Gate, base_url: str) -> None:
    """Socket Mode when an app token is set; in the sandbox, point the stand-in at our events URL."""
    settings = gate.settings
    if settings.slack_app_token is not None:
        from bot.slack.app import start_socket_mode

        gate.socket_handler = await start_socket_mode(gate.bolt, settings.slack_app_token.get_secret_value())
    stand_in = gate.slack_stand_in
    if stand_in is not None:
        stand_in.events_url = f"{base_url}/slack/events"


def _write_private(path: Path, text: str) -> None:
    path.write_text(text + "\n")
    path.chmod(0o600)


def sandbox_banner(settings: Settings) -> list[str]:
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
        lines.append("SANDBOX MODE: Slack is an in-process stand-in; no message reaches a real workspace.")
        lines.append(
            "  To use real Slack install the app from manifest.yml and set SLACK_BOT_TOKEN, "
            "SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN for Socket Mode) and SLACK_ALERTS_CHANNEL."
        )
    if settings.crm_sandbox and settings.slack_sandbox:
        lines.append(f"Open http://localhost:{settings.port}/sandbox/ to try it as a rep or as ops.")
    return lines


async def serve(settings: Settings) -> None:
    from bot.web import build_web_app

    gate = await build_gate(settings)
    app = build_web_app(gate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    await start_slack(gate, f"http://127.0.0.1:{settings.port}")
    gate.start_jobs()
    for line in sandbox_banner(settings):
        log.warning(line)
    if settings.crm_sandbox:
        _, key = await gate.ledger.create_agent("sandbox-agent", replace=True)
        _write_private(SANDBOX_KEY_FILE, key)
        log.warning("  A sandbox agent key (new at each start) is in %s. Try:", SANDBOX_KEY_FILE)
        log.warning(
            "  curl -s localhost:%d/v1/proposals -H \"Authorization: Bearer $(cat %s)\" "
            "-H 'Idempotency-Key: try-1' -H 'Content-Type: application/json' "
            """-d '{"object":"deals","record_id":"9001","changes":{"description":"Renewal confirmed"}}'""",
            settings.port,
            SANDBOX_KEY_FILE,
        )
    log.info(
        "crm gate listening on http://%s:%d (crm=%s, database=%s, slack=%s)",
        settings.host,
        settings.port,
        settings.crm,
        "sqlite" if settings.is_sqlite else "postgresql",
        "socket mode" if settings.slack_app_token else "http" if not settings.slack_sandbox else "sandbox",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
        await gate.close()
