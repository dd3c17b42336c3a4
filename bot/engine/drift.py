"""Drift alarms: notice when a live field starts going wrong before the forecast does.

Over a sliding window, per field: the share of reviewed proposals people reject or edit, and
the share of autonomous writes that get rolled back. Crossing a threshold raises one alarm (one
message to the alerts channel, with the figures and recent examples), not one per event; the
alarm re-arms when the rate falls back. A volume alarm fires when agents change more than a
set share of an object's records within a window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.engine.ports import CRM, CRMError
from bot.engine.values import preview
from bot.ledger.repo import Ledger, new_id, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftLimits:
    window: timedelta = timedelta(hours=24)
    min_events: int = 10
    rejection_rate: float = 0.3
    edit_rate: float = 0.5
    rollback_rate: float = 0.1
    volume_window: timedelta = timedelta(hours=1)
    volume_share: float = 0.2
    volume_min_records: int = 20


class Drift:
    def __init__(self, ledger: Ledger, crm: CRM, limits: DriftLimits, *, on_alert: Any = lambda: None) -> None:
        self.ledger = ledger
        self.crm = crm
        self.limits = limits
        self.on_alert = on_alert
        self._totals: dict[str, tuple[float, int]] = {}

    async def check(self) -> int:
        """Raise (or clear) alarms; returns how many were raised now."""
        raised = 0
        limits = self.limits
        since = utcnow() - limits.window
        for (object_type, field, tier), c in (await self.ledger.live_counts(since)).items():
            if tier == "reviewed":
                metrics = [("rejection", c["rejected"], c["decided"], limits.rejection_rate, ["rejected"]),
                           ("edit", c["edited"], c["decided"], limits.edit_rate, ["committed", "conflict", "failed"])]
            else:
                metrics = [("rollback", c["rolled_back"], c["committed"], limits.rollback_rate, ["committed"])]
            for name, hits, total, threshold, statuses in metrics:
                key = f"{object_type}.{field}.{name}"
                if total >= limits.min_events and hits / total > threshold:
                    examples = await self.ledger.recent_changes(object_type, field, statuses)
                    text = (
                        f":chart_with_downwards_trend: Drift on `{object_type}.{field}`: {hits} of {total} "
                        f"{'reviewed proposals' if tier == 'reviewed' else 'autonomous writes'} "
                        f"{ {'rejection': 'rejected', 'edit': 'edited by the reviewer', 'rollback': 'rolled back'}[name] } "
                        f"in the last {_span(limits.window)} ({hits / total:.0%}; alarm above {threshold:.0%})."
                    )
                    if examples:
                        text += " Recent: " + "; ".join(
                            f"{e['record_id']}: {preview(e['proposed'], 60)}" + (f" ({preview(e['error'], 80)})" if e.get("error") else "")
                            for e in examples
                        )
                    if await self.ledger.raise_alarm(
                        key, {"hits": hits, "total": total}, {"id": new_id("alr"), "kind": "drift", "text": text}
                    ):
                        raised += 1
                else:
                    await self.ledger.clear_alarm(key)
        raised += await self._volume()
        if raised:
            self.on_alert()
        return raised

    async def _volume(self) -> int:
        limits = self.limits
        raised = 0
        changed = await self.ledger.records_changed(utcnow() - limits.volume_window)
        for object_type, count in changed.items():
            key = f"volume:{object_type}"
            if count < limits.volume_min_records:
                await self.ledger.clear_alarm(key)
                continue
            total = await self._total(object_type)
            if total and count / total > limits.volume_share:
                text = (
                    f":rotating_light: Volume alarm: agents changed {count} of {total} {object_type} records "
                    f"({count / total:.0%}) in the last {_span(limits.volume_window)}; the alarm is set at "
                    f"{limits.volume_share:.0%}. Check the agent runs, and roll back with `/crm-rollback run:ID` if needed."
                )
                if await self.ledger.raise_alarm(key, {"changed": count, "total": total}, {"id": new_id("alr"), "kind": "volume", "text": text}):
                    raised += 1
            else:
                await self.ledger.clear_alarm(key)
        return raised

    async def _total(self, object_type: str) -> int | None:
        cached = self._totals.get(object_type)
        if cached and time.monotonic() - cached[0] < 600:
            return cached[1]
        try:
            total = await self.crm.count_records(object_type)
        except CRMError as exc:
            log.warning("could not count %s records for the volume alarm: %s", object_type, exc.message)
            return cached[1] if cached else None
        self._totals[object_type] = (time.monotonic(), total)
        return total


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day(s)" if seconds != 86400 else "24 hours"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour(s)"
    return f"{seconds // 60} minute(s)"
