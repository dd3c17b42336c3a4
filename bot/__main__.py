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
    from bot.app import serve

    asyncio.run(serve(settings))
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
    settings = load_settings()
    policy = load_policy(settings.tiers_file)
    fields = policy.listed_fields(settings.policy_crm)
    print(f"{settings.tiers_file}: valid; {len(fields)} field(s) listed for {settings.policy_crm}")
    return 0


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

    check = sub.add_parser("check", help="validate the configuration and tiers.yaml")
    check.set_defaults(func=cmd_check)
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
