"""Command line: `python -m bot serve | db | agents | check`.

User errors (a bad setting, a malformed tiers.yaml) print one line naming the problem and exit
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bot.config import ConfigError, Settings, load_settings
from bot.policy import PolicyError, load_policy

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("aiohttp.access", "urllib3", "slack_sdk", "slack_bolt", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def _with_ledger(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    from bot.ledger.db import make_engine, upgrade
    from bot.ledger.repo import Ledger

    engine = make_engine(settings.database_url)
    try:
        await upgrade(engine)
        return await work(Ledger(engine))
    finally:
        await engine.dispose()


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.sandbox:
        overrides["sandbox"] = True
    if args.port:
        overrides["port"] = args.port
    settings = load_settings(**overrides)
    load_policy(settings.tiers_file)  # fail fast with file:line before anything starts
    setup_logging(settings.log_level)
    from bot import loop
    from bot.app import serve

    loop.run(serve(settings), settings.event_loop)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def run() -> int:
        from bot.ledger.db import current_revision, make_engine, upgrade

        engine = make_engine(settings.database_url)
        try:
            if args.action == "upgrade":
                await upgrade(engine)
            print(f"database at revision {await current_revision(engine) or '(empty)'}")
        finally:
            await engine.dispose()
        return 0

    return asyncio.run(run())


def cmd_agents(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def run(ledger: Any) -> int:
        if args.action == "add":
            try:
                agent, key = await ledger.create_agent(args.name)
            except ValueError as exc:
                raise CLIError(str(exc)) from None
            print(f"agent {agent.name} created ({agent.id}). Its key, shown this once:")
            print(key)
            return 0
        if args.action == "list":
            rows = await ledger.list_agents()
            if not rows:
                print("no agents yet: python -m bot agents add NAME")
            for a in rows:
                state = f"revoked {a.revoked_at:%Y-%m-%d %H:%M}" if a.revoked_at else "active"
                print(
                    f"{a.name:<30} {a.key_prefix}…  created {a.created_at:%Y-%m-%d %H:%M}  {state}"
                )
            return 0
        if not await ledger.revoke_agent(args.name):
            raise CLIError(f"no active agent named {args.name!r}")
        print(f"agent {args.name} revoked; its key no longer works")
        return 0

    return asyncio.run(_with_ledger(settings, run))


def cmd_check(args: argparse.Namespace) -> int:
    """tiers.yaml against the CRM's live schema: every listed field exists and is writable."""
    settings = load_settings()
    policy = load_policy(settings.tiers_file)
    fields = policy.listed_fields(settings.policy_crm)
    print(f"{settings.tiers_file}: valid; {len(fields)} field(s) listed for {settings.policy_crm}")
    if settings.crm_sandbox:
        print("CRM=sandbox: the schema check runs against the sandbox's seeded HubSpot schema")
    return asyncio.run(_check(settings, policy))


async def _check(settings: Settings, policy: Any) -> int:
    from bot.app import build_crm
    from bot.engine.ports import CRMError
    from bot.engine.schema import SchemaCache, check_policy

    stand_ins: list[Any] = []
    crm = await build_crm(settings, stand_ins)
    try:
        findings = await check_policy(policy, settings.policy_crm, SchemaCache(crm))
    except CRMError as exc:
        raise CLIError(f"could not read the CRM's schema: {exc.message}") from None
    finally:
        await crm.close()
        for stand_in in stand_ins:
            await stand_in.stop()
    for finding in findings:
        print(f"{finding.severity}: {finding.message}")
    errors = sum(f.severity == "error" for f in findings)
    print("schema check: " + ("OK, every listed field exists and is writable" if not findings else f"{errors} error(s), {len(findings) - errors} warning(s)"))
    return 1 if errors else 0


def cmd_shadow(args: argparse.Namespace) -> int:
    import json

    from bot.config import parse_duration
    from bot.engine.shadow import live_report, live_table, report_json, report_table

    settings = load_settings()
    policy = load_policy(settings.tiers_file)
    try:
        window = parse_duration(args.since) if args.action == "report" else None
    except ValueError as exc:
        raise CLIError(f"--since: {exc}") from None

    async def run(ledger: Any) -> int:
        from bot.app import build_crm, replica_id
        from bot.engine.shadow import Shadow
        from bot.ledger.repo import utcnow

        stand_ins: list[Any] = []
        crm = await build_crm(settings, stand_ins) if args.action == "evaluate" else None
        try:
            shadow = Shadow(ledger, crm, policy, settings.policy_crm, owner=replica_id(), delay=settings.shadow_eval_delay)  # type: ignore[arg-type]
            if args.action == "evaluate":
                captured = await shadow.capture()
                judged = await shadow.evaluate(ignore_delay=args.now)
                print(f"captured {captured} current value(s); judged {judged} shadowed proposal(s)")
                return 0
            assert window is not None
            since = utcnow() - window
            reports = await shadow.report(since)
            live = await live_report(ledger, since)
            if args.format == "json":
                print(json.dumps(report_json(reports, since, live), indent=2))
            else:
                print(report_table(reports, since))
                print()
                print(live_table(live))
            return 0
        finally:
            if crm is not None:
                await crm.close()
            for stand_in in stand_ins:
                await stand_in.stop()

    return asyncio.run(_with_ledger(settings, run))


def cmd_rollback(args: argparse.Namespace) -> int:
    settings = load_settings()
    if settings.crm_sandbox:
        raise CLIError(
            "the sandbox CRM lives inside the running server; roll back with /crm-rollback on "
            "the sandbox page, or point CRM at HubSpot or Salesforce"
        )
    return asyncio.run(_rollback(settings, args))


async def _rollback(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    from bot.app import build_crm, govern, replica_id
    from bot.engine.committer import Committer
    from bot.engine.rollback import Rollbacks, TargetError
    from bot.ledger.db import make_engine, upgrade
    from bot.ledger.repo import Ledger
    from bot.metrics import Metrics

    engine = make_engine(settings.database_url)
    await upgrade(engine)
    ledger = Ledger(engine)
    # The same budget as the servers': a rollback from the CLI never pushes the CRM past it.
    crm = govern(await build_crm(settings, []), engine, settings, Metrics())
    actor = f"cli:{getpass.getuser()}"
    try:
        rollbacks = Rollbacks(ledger, crm)
        # Confirmed in advance (--yes, conflicts left alone): the CRM is read once, by the
        # committer right before each write, instead of once more for a preview nobody reads.
        check = not (args.yes and not args.include_conflicts and not args.dry_run)
        try:
            plan = await rollbacks.preview(args.target, actor, check=check)
        except TargetError as exc:
            raise CLIError(str(exc)) from None
        for item in plan.items:
            restore = "delete the activity" if item.kind == "activity" else f"restore {item.restore!r}"
            now = "" if item.verdict == "unchecked" else f"now {item.now!r} "
            print(f"{item.verdict:<9} {item.object_type} {item.record_id} {item.field}: {now}-> {restore}")
        reverts, conflicts = plan.count("revert") + plan.count("unchecked"), plan.count("conflict")
        if check:
            print(f"{reverts} to revert, {conflicts} conflict(s), {plan.count('already')} already reverted, {plan.count('missing')} missing")
        else:
            print(f"{reverts} to revert; each is checked against the CRM right before it is written, and left alone if a person changed it since")
        todo = reverts + (conflicts if args.include_conflicts else 0)
        if args.dry_run or not todo:
            await rollbacks.cancel(plan.id, actor)
            if not todo:
                print("nothing to write")
            return 0 if args.dry_run or not conflicts else 1
        if not args.yes:
            if not sys.stdin.isatty():
                raise CLIError("confirm with --yes when not running in a terminal")
            prompt = f"Write {todo} compensating change(s)? [y/N] "
            answer = (await asyncio.to_thread(input, prompt)).strip().lower()
            if answer not in ("y", "yes"):
                await rollbacks.cancel(plan.id, actor)
                print("cancelled; nothing written")
                return 1
        await rollbacks.confirm(plan.id, actor, include_conflicts=args.include_conflicts)
        committer = Committer(ledger, crm, owner=replica_id(), batch_size=settings.commit_batch_size, lease=settings.lease_duration)
        status = await rollbacks.status(plan.id)
        while not status["settled"]:
            if not await committer.run_once():
                await asyncio.sleep(0.2)  # leased by a running server, or waiting out a rate limit
            status = await rollbacks.status(plan.id)
            _progress(status)
        await rollbacks.finish_settled()
        print(file=sys.stderr)
        print(
            f"rolled back {plan.target} ({plan.id}): {status['reverted']} reverted, "
            f"{status['conflicts']} conflict(s) left alone, {status['failed']} failed"
        )
        for failure in status["failures"]:
            print(f"  {failure['field']} ({failure['change_id']}): {failure['error']}")
        return 0 if status["reverted"] == status["total"] and not status["conflicts"] else 1
    finally:
        await crm.close()
        await engine.dispose()


def _progress(status: dict[str, Any], width: int = 30) -> None:
    total = max(1, status["total"])
    done = status["total"] - status["pending"]
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{status['total']} written")
    sys.stderr.flush()


def cmd_audit(args: argparse.Namespace) -> int:
    settings = load_settings()
    since = None
    if args.action == "export" and args.since:
        from bot.engine.rollback import TargetError, parse_since

        try:
            since = parse_since(args.since)
        except TargetError as exc:
            raise CLIError(str(exc).replace("since:", "--since ")) from None
    found: list[dict[str, Any]] = []

    async def run(ledger: Any) -> int:
        if args.action == "export":
            found.extend(await ledger.audit_events(since=since))
            return 0
        checked, broken = await ledger.verify_audit()
        if broken is None:
            print(f"audit trail intact: {checked} event(s), every link verified")
            return 0
        print(
            f"audit trail BROKEN at event #{broken['id']} ({broken['kind']} at {broken['at']:%Y-%m-%d %H:%M:%S}): "
            f"its hash does not match its content or its predecessor; {checked} event(s) before it verified"
        )
        return 1

    status = asyncio.run(_with_ledger(settings, run))
    if args.action == "export":
        if args.output:
            with open(args.output, "w", newline="") as out:
                write_audit(found, args.format, out)
            print(f"wrote {len(found)} event(s) to {args.output}", file=sys.stderr)
        else:
            write_audit(found, args.format, sys.stdout)
    return status


def write_audit(events: list[dict[str, Any]], fmt: str, out: Any) -> None:
    import csv
    import json

    columns = ["id", "at", "actor", "kind", "proposal_id", "change_id", "data", "prev_hash", "hash"]
    if fmt == "jsonl":
        for event in events:
            out.write(json.dumps({c: event[c] for c in columns}, default=str, sort_keys=True) + "\n")
        return
    writer = csv.writer(out)
    writer.writerow(columns)
    for event in events:
        writer.writerow(
            [json.dumps(event[c], sort_keys=True) if c == "data" else event[c].isoformat() if c == "at" else event[c] for c in columns]
        )


def cmd_bench(args: argparse.Namespace) -> int:
    from bot.bench import run_bench

    return run_bench(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bot", description="The CRM write gate for AI agents."
    )
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the webhook, the Slack app and the background jobs")
    serve.add_argument(
        "--sandbox", action="store_true", help="use the in-process CRM and Slack stand-ins"
    )
    serve.add_argument("--port", type=int, help="listen port (default: PORT or 3000)")
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(func=cmd_db)

    agents = sub.add_parser("agents", help="manage agent keys")
    agents_sub = agents.add_subparsers(dest="action", required=True)
    add = agents_sub.add_parser("add", help="create an agent and print its key once")
    add.add_argument("name")
    agents_sub.add_parser("list", help="list agents")
    revoke = agents_sub.add_parser("revoke", help="revoke an agent's key")
    revoke.add_argument("name")
    agents.set_defaults(func=cmd_agents)

    check = sub.add_parser("check", help="check the configuration and tiers.yaml against the CRM's schema")
    check.set_defaults(func=cmd_check)

    shadow = sub.add_parser("shadow", help="shadow mode: evaluate shadowed proposals, report precision")
    shadow_sub = shadow.add_subparsers(dest="action", required=True)
    evaluate = shadow_sub.add_parser("evaluate", help="judge shadowed proposals whose window has passed")
    evaluate.add_argument("--now", action="store_true", help="judge every shadowed proposal, ignoring the window")
    report = shadow_sub.add_parser("report", help="precision per field and the promotion verdict")
    report.add_argument("--since", default="14d", help="how far back (default 14d)")
    report.add_argument("--format", choices=["table", "json"], default="table")
    shadow.set_defaults(func=cmd_shadow)

    rollback = sub.add_parser("rollback", help="undo agent writes from their before-images")
    rollback.add_argument("target", help="chg_..., prp_..., rb_..., run:RUN_ID, or 'agent:NAME since:WHEN'")
    rollback.add_argument("--dry-run", action="store_true", help="show what would be reverted; write nothing")
    rollback.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rollback.add_argument(
        "--include-conflicts", action="store_true", help="also overwrite fields people changed since the agent"
    )
    rollback.set_defaults(func=cmd_rollback)

    audit = sub.add_parser("audit", help="the hash-chained audit trail")
    audit_sub = audit.add_subparsers(dest="action", required=True)
    audit_sub.add_parser("verify", help="check every link of the chain; report the first broken one")
    export = audit_sub.add_parser("export", help="write the trail as JSON lines or CSV")
    export.add_argument("--since", help="a time (2026-11-30T09:00Z) or a duration (14d)")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    audit.set_defaults(func=cmd_audit)

    bench = sub.add_parser("bench", help="load the gate against the CRM and Slack stand-ins; print one table")
    bench.add_argument("--seconds", type=float, default=15.0, help="length of each phase (default 15)")
    bench.add_argument("--rate", type=float, default=200.0, help="offered rate for intake latency (default 200/s)")
    bench.add_argument("--commit-rate", type=float, default=100.0, help="offered rate for the commit path (default 100/s)")
    bench.add_argument("--agents", type=int, default=256, help="concurrent agents: requests in flight at saturation (default 256)")
    bench.add_argument("--crm-latency", type=float, default=0.1, help="seconds the CRM stand-in adds to each request (default 0.1)")
    bench.add_argument("--crm-limit", type=int, default=100, help="CRM requests allowed per window, stand-in and gate (default 100)")
    bench.add_argument("--crm-window", type=float, default=10.0, help="the CRM rate window in seconds (default 10)")
    bench.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    bench.add_argument("--replicas", type=int, choices=[1, 2], default=1, help="gate processes on one database")
    bench.add_argument(
        "--soak", type=float, default=0.0, metavar="SECONDS",
        help="also hold the commit rate steady this long (300 for the 5-minute soak) and report RSS growth over it",
    )  # fmt: skip
    bench.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, PolicyError, CLIError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
