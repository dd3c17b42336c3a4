"""Alerts: an outbox in the ledger, sent to the alerts channel by one dispatcher.

Alerts are written in the same transaction as the event that raised them, so none is lost when
the process dies. The dispatcher posts at most one message per `min_interval` (Slack allows
about one message per second per channel): under a burst it sends one digest holding every
waiting alert instead of dropping any. With several replicas, `turn` (a bucket in the database,
shared by them) spaces the posts of all of them, not just of one process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from bot.engine.ports import Notifier
from bot.ledger.repo import Ledger

log = logging.getLogger(__name__)

DIGEST_MAX = 40  # alerts per digest; each line is short, and Slack's text limit is 40,000 chars


class AlertDispatcher:
    def __init__(
        self,
        ledger: Ledger,
        notifier: Notifier,
        *,
        owner: str,
        min_interval: float = 1.1,
        lease: timedelta = timedelta(seconds=30),
        turn: Callable[[], Awaitable[float]] | None = None,
    ) -> None:
        self.ledger = ledger
        self.notifier = notifier
        self.owner = owner
        self.min_interval = min_interval
        self.lease = lease
        # Takes the channel's next turn (returns 0), or says how many seconds until it is due;
        # None: this process alone posts, one message per min_interval.
        self.turn = turn
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                while not stop.is_set():
                    if self.turn is not None:
                        if not await self.ledger.alerts_to_send():
                            break
                        # The turn lives in the database (other replicas take it too): poll it.
                        while (wait := await self.turn()) > 0:  # noqa: ASYNC110
                            await asyncio.sleep(wait)  # meanwhile, more alerts gather
                    if not await self.run_once():
                        break
                    if self.turn is None:
                        await asyncio.sleep(self.min_interval)
            except Exception:
                log.exception("alert dispatch failed; retrying")
                await asyncio.sleep(self.min_interval)

    async def run_once(self) -> int:
        """Send what waits, as one message; returns how many alerts it carried."""
        batch = await self.ledger.claim_alerts(self.owner, DIGEST_MAX, self.lease)
        if not batch:
            return 0
        text, blocks = render(batch)
        try:
            await self.notifier.post_alert(text, blocks)
        except Exception as exc:  # the notifier's own errors vary by face; all are retried
            log.warning("could not post %d alert(s): %s", len(batch), exc)
            await self.ledger.alerts_failed(
                [a["id"] for a in batch], self.owner, str(exc), timedelta(seconds=5)
            )
            return 0
        await self.ledger.alerts_sent([a["id"] for a in batch], self.owner)
        return len(batch)


def render(batch: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]] | None]:
    if len(batch) == 1:
        alert = batch[0]
        return alert["text"], alert.get("blocks")
    lines = [f"*{len(batch)} alerts* from the CRM write gate:"] + [
        f"• {_clip(a['text'], 2900)}" for a in batch
    ]
    # Section text holds 3000 characters: pack the lines into as few sections as fit.
    sections: list[str] = []
    for line in lines:
        if sections and len(sections[-1]) + 1 + len(line) <= 3000:
            sections[-1] += "\n" + line
        else:
            sections.append(line)
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": s}} for s in sections]
    return "\n".join(lines), blocks


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
