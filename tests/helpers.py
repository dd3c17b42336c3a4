"""Helpers shared by the end-to-end tests that drive Slack and the review loop."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from bot.sandbox import seed

ROOT = str(Path(__file__).resolve().parent.parent)

AVA, BEN, OPS, OUTSIDER = "U0AVA", "U0BEN", seed.OPS_USER.slack_id, seed.OUTSIDER.slack_id


async def eventually(check, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def action_ids(message: dict[str, Any]) -> list[str]:
    return [
        e["action_id"]
        for b in message.get("blocks") or []
        if b["type"] == "actions"
        for e in b["elements"]
    ]


def message_text(message: dict[str, Any]) -> str:
    return json.dumps(message.get("blocks") or []) + message.get("text", "")


async def propose_stage(server, record_id: str = "9001", stage: str = "contractsent", **extra) -> dict[str, Any]:
    status, body = await server.propose(
        {
            "object": "deals",
            "record_id": record_id,
            "changes": {"dealstage": stage},
            "reason": "Buyer asked for the contract on the call",
            "evidence": ["https://calls.example.com/rec/42"],
            "run_id": "run-7",
            **extra,
        }
    )
    assert status == 202, body
    assert body["changes"][0]["status"] == "pending_review"
    return body


async def review_dm(server, user_id: str, proposal_id: str) -> tuple[str, dict[str, Any]]:
    """Wait for the review message of `proposal_id` in the user's DM."""
    channel = server.slack.dm_channel(user_id)

    def find():
        for m in server.slack.messages(channel):
            if proposal_id in json.dumps(m.get("blocks") or []):
                return m
        return None

    message = await eventually(find, what=f"review DM to {user_id}")
    return channel, message


async def change_status(server, proposal_id: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    async def check():
        detail = await server.proposal(proposal_id)
        return detail if detail["changes"][0]["status"] == status else None

    return await eventually(check, timeout, f"change to become {status}")


async def current_message(server, channel: str, ts: str) -> dict[str, Any]:
    return server.slack.message(channel, ts)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_cli(env: dict[str, str], *args: str, cwd: str | None = None) -> tuple[int, str, str]:
    """`python -m bot ARGS` in a subprocess: (exit code, stdout, stderr)."""
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, env=env, cwd=cwd or ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(b""), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def start_server(env: dict[str, str], port: int, cwd: Any) -> asyncio.subprocess.Process:
    """`python -m bot serve` on `port`, once it answers /healthz."""
    import sys

    import aiohttp

    log = open(Path(cwd) / f"server-{port}.log", "ab")  # noqa: SIM115,ASYNC230  (kept for a failing test's post-mortem)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve", env={**env, "PORT": str(port)}, cwd=str(cwd),
        stdout=log, stderr=log,
    )
    log.close()
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start")


def service_loop() -> str:
    """The event loop `python -m bot serve` runs on here: uvloop unless EVENT_LOOP says otherwise."""
    from bot.loop import loop_factory

    return "uvloop" if loop_factory(os.environ.get("EVENT_LOOP", "auto").lower()) else "asyncio"
