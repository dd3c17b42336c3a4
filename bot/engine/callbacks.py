"""Callbacks: each terminal outcome of a change is POSTed to the agent's `callback_url`.

The outbox row is written in the same transaction as the outcome (see `Ledger._after_moves`), so
none is lost. Delivery retries with exponential backoff for about a day; every attempt is
recorded. The body is signed: `X-Gate-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with CALLBACK_SIGNING_SECRET>`, so the agent can check it came from the gate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta

import aiohttp

from bot.ledger.repo import Ledger

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12  # 1 s, 2 s, 4 s ... about 34 minutes, then hourly: roughly a day in all
SIGNATURE_HEADER = "X-Gate-Signature"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def verify(secret: str, body: bytes, header: str, *, tolerance: int = 300) -> bool:
    """What an agent does with the header (also used by the tests)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, ts), header)


def backoff(attempt: int) -> timedelta:
    return timedelta(seconds=min(3600, 2 ** max(0, attempt - 1)))


class CallbackSender:
    def __init__(
        self,
        ledger: Ledger,
        secret: str,
        *,
        owner: str,
        timeout: float = 10.0,
        lease: timedelta = timedelta(seconds=60),
    ) -> None:
        self.ledger = ledger
        self.secret = secret
        self.owner = owner
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.lease = lease
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def run_once(self) -> int:
        due = await self.ledger.claim_callbacks(self.owner, 20, self.lease)
        if not due:
            return 0
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        await asyncio.gather(*(self._deliver(row) for row in due))
        return len(due)

    async def _deliver(self, row: dict[str, object]) -> None:
        body = json.dumps(row["payload"], separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "crm-write-gate",
            "X-Gate-Event-Id": str(row["id"]),
            SIGNATURE_HEADER: sign(self.secret, body),
        }
        status: int | None = None
        error: str | None = None
        assert self._session is not None
        try:
            async with self._session.post(str(row["url"]), data=body, headers=headers) as resp:
                status = resp.status
                if 200 <= resp.status < 300:
                    await self.ledger.callback_result(
                        str(row["id"]), self.owner, delivered=True, status=status, error=None, retry_in=None
                    )
                    return
                error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        attempts = int(row["attempts"])  # type: ignore[call-overload]
        retry = backoff(attempts) if attempts < MAX_ATTEMPTS else None
        log.warning("callback %s to %s failed (%s); %s", row["id"], row["url"], error, "retrying" if retry else "giving up")
        await self.ledger.callback_result(
            str(row["id"]), self.owner, delivered=False, status=status, error=error, retry_in=retry
        )
