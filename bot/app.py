"""The composition root: builds the gate from `Settings` and runs it.

In sandbox mode (no CRM credentials, or `serve --sandbox`) the HubSpot stand-in runs in-process,
seeded with demo data, and the real HubSpot adapter talks to it over HTTP. Without a Slack token
the Slack stand-in runs in-process too and the real Slack client points at it, with the same
signing secret the stand-in signs with. Same code paths, same wire, no accounts needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.config import ConfigError, Settings
from bot.engine.alerts import AlertDispatcher
from bot.engine.callbacks import CallbackSender
from bot.engine.committer import Committer
from bot.engine.drift import Drift, DriftLimits
from bot.engine.governor import GovernedCRM
from bot.engine.intake import Intake
from bot.engine.ports import CRM, CRMError
from bot.engine.review import Reviews
from bot.engine.rollback import Rollbacks
from bot.engine.schema import Finding, SchemaCache, SchemaWatch
from bot.engine.shadow import Shadow
from bot.ledger.budget import SqlBudgetStore
from bot.ledger.db import make_engine, upgrade
from bot.ledger.repo import Ledger
from bot.metrics import InstrumentedCRM, Metrics
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
    metrics: Metrics
    schemas: SchemaCache
    schema_watch: SchemaWatch
    shadow: Shadow
    drift: Drift
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
            "shadow-capture": periodic(self.shadow.capture, self.stop_event, 1.0),
            "shadow-evaluate": periodic(self.shadow.evaluate, self.stop_event, 60.0),
            "drift": periodic(self.drift.check, self.stop_event, 60.0),
            "schema": periodic(
                self.check_schema, self.stop_event, self.settings.schema_check_interval.total_seconds()
            ),
            "gauges": periodic(self.refresh_gauges, self.stop_event, 10.0),
        }
        for name, job in jobs.items():
            self.tasks.append(asyncio.create_task(job, name=name))  # type: ignore[arg-type]

    async def check_schema(self) -> int:
        """The periodic drift check of tiers.yaml against the CRM's schema (alerts on change)."""
        try:
            await self.schema_watch.run_once()
        except CRMError as exc:
            log.warning("schema check skipped: the CRM answered %s: %s", exc.kind.value, exc.message)
        return 0

    async def refresh_gauges(self) -> int:
        self.metrics.pending_reviews.set(await self.ledger.pending_review_count())
        return 0

    async def close(self) -> None:
        self.stop_event.set()
        for wake in (self.committer.wake, self.alerts.wake, self.reviews.wake):
            wake()
        # Let each job finish the pass it is in: a job cancelled inside a transaction would
        # leave SQLite locked for other connections until its busy timeout.
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=10)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        if self.socket_handler is not None:
            await self.socket_handler.close_async()
        await self.callbacks.close()
        await self.slack_client.session.close()
        await self.crm.close()
        await self.ledger.close()
        for stand_in in self.stand_ins:
            await stand_in.stop()


async def periodic(job: Callable[[], Awaitable[int]], stop: asyncio.Event, interval: float) -> None:
    while not stop.is_set():
        try:
            while not stop.is_set() and await job():
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


def govern(crm: CRM, engine: Any, settings: Settings, metrics: Metrics) -> GovernedCRM:
    """Every CRM call spends from one budget shared by all replicas (through the database)."""
    defaults = {"salesforce": 200}  # HubSpot private apps: 100 per 10 s at the lowest tier
    return GovernedCRM(
        crm,
        SqlBudgetStore(engine),
        name=str(settings.crm),
        requests=settings.crm_rate_limit or defaults.get(str(settings.crm), 100),
        per_seconds=settings.crm_rate_window.total_seconds(),
        daily_limit=settings.crm_daily_limit,
        daily_share=settings.crm_daily_share,
        max_concurrency=settings.crm_max_workers,
        on_wait=metrics.waited,
    )


async def build_slack(settings: Settings, stand_ins: list[Any], metrics: Metrics) -> SlackSetup:
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
            make_client(slack.bot_token, slack.api_url, metrics),
            settings.slack_alerts_channel or seed.ALERTS_CHANNEL,
            slack.signing_secret,
            settings.review_fallback_channel or seed.FALLBACK_CHANNEL,
            settings.slack_ops_users or [seed.OPS_USER.slack_id],
        )
    assert settings.slack_bot_token is not None and settings.slack_alerts_channel is not None
    return SlackSetup(
        make_client(settings.slack_bot_token.get_secret_value(), settings.slack_api_url, metrics),
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
    metrics = Metrics()
    crm = govern(InstrumentedCRM(await build_crm(settings, stand_ins), metrics), engine, settings, metrics)
    slack = await build_slack(settings, stand_ins, metrics)
    if settings.shadow_all is not None:
        policy = dataclasses.replace(policy, shadow_all=settings.shadow_all)
    schemas = SchemaCache(crm)
    owner = replica_id()
    channel = SlackChannel(slack.client, slack.alerts_channel)
    committer = Committer(
        ledger,
        crm,
        owner=owner,
        batch_size=settings.commit_batch_size,
        linger=settings.commit_linger,
        lease=settings.lease_duration,
        interval=settings.job_interval,
    )
    alerts_every = 1.1  # seconds: Slack allows about one message per second per channel
    turns = SqlBudgetStore(engine)  # the channel's turns are shared by replicas like the CRM budget

    async def alert_turn() -> float:
        return await turns.take(
            f"slack-alerts:{slack.alerts_channel}",
            rate=1 / alerts_every,
            capacity=1.0,
            daily_limit=None,
            now=datetime.now(UTC),
        )

    alerts = AlertDispatcher(ledger, channel, owner=owner, min_interval=alerts_every, turn=alert_turn)
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
    committer.metrics = metrics
    # A commit pass reads and writes (2 requests), more with a note or a second object type.
    committer.pace = crm.pace("commit", settings.commit_budget_share, cost=2.0)
    reviews.pace = crm.pace("review", settings.review_budget_share, cost=1.0)
    reviews.metrics = metrics
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
        schemas=schemas,
        metrics=metrics,
    )

    async def schema_changed(new: list[Finding], resolved: list[Finding]) -> None:
        lines = [f":warning: {f.message}" for f in new if f.severity == "error"]
        lines += [f":white_check_mark: resolved: {f.message}" for f in resolved if f.severity == "error"]
        if lines:
            await ledger.enqueue_alert(
                "schema", "tiers.yaml and the CRM's schema disagree; proposals for these fields are refused:\n" + "\n".join(lines)
                if any(f.severity == "error" for f in new)
                else "\n".join(lines),
            )
            alerts.wake()

    schema_watch = SchemaWatch(policy, settings.policy_crm, schemas, on_change=schema_changed)
    intake.blocked_fields = schema_watch.blocked_fields
    reviews.describe = schemas.get
    drift_limits = DriftLimits(
        window=settings.drift_window,
        min_events=settings.drift_min_events,
        rejection_rate=settings.drift_rejection_rate,
        edit_rate=settings.drift_edit_rate,
        rollback_rate=settings.drift_rollback_rate,
        volume_window=settings.volume_window,
        volume_share=settings.volume_alarm_share,
        volume_min_records=settings.volume_alarm_min_records,
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
        metrics=metrics,
        schemas=schemas,
        schema_watch=schema_watch,
        shadow=Shadow(
            ledger, crm, policy, settings.policy_crm, owner=owner, delay=settings.shadow_eval_delay, metrics=metrics
        ),
        drift=Drift(ledger, crm, drift_limits, on_alert=alerts.wake),
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


async def startup_schema_check(gate: Gate) -> None:
    """A field tiers.yaml lists that the CRM does not have stops start-up (unless lenient)."""
    try:
        findings = await gate.schema_watch.run_once()
    except CRMError as exc:
        if exc.kind.value == "unauthorized":
            raise ConfigError(f"the CRM refused the credentials: {exc.message}") from None
        log.warning("could not check tiers.yaml against the CRM's schema at start-up: %s", exc.message)
        return
    errors = [f for f in findings if f.severity == "error"]
    for finding in findings:
        log.warning("schema: %s", finding.message)
    if errors and gate.settings.schema_check == "strict":
        raise ConfigError(
            f"{gate.settings.tiers_file} does not match the CRM: "
            + "; ".join(f.message for f in errors)
            + " (fix tiers.yaml, or set SCHEMA_CHECK=lenient to start and refuse those fields)"
        )


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


def _settle_heap() -> None:
    """Move what start-up built (modules, models, clients, compiled SQL) out of the garbage
    collector's sight: a full collection then scans only what the traffic allocates, and pauses
    for a few milliseconds instead of about 80 (pauses every request in flight waits out).
    Young collections run every 10,000 net allocations rather than 700: a request allocates
    hundreds of short-lived objects, and most are gone before a collection would look at them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


async def serve(settings: Settings) -> None:
    from bot.web import build_web_app

    gate = await build_gate(settings)
    try:
        await startup_schema_check(gate)
    except BaseException:
        await gate.close()
        raise
    app = build_web_app(gate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    await start_slack(gate, f"http://127.0.0.1:{settings.port}")
    gate.start_jobs()
    _settle_heap()
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
