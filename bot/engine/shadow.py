"""Shadow mode: measure an agent's precision on a field before the field is trusted with writes.

A shadowed change is logged with the CRM's value at that moment (captured by a job right after
intake). After a window, evaluation looks at what people actually did: set the proposed value
(agreed), set another value (disagreed), or left it alone (unchanged). It uses the CRM's field
history where there is one, to count only people's edits, else the current value. The report
turns this into precision with a Wilson interval and a verdict against the promotion gate in
tiers.yaml.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.engine.ports import CRM, CRMError, FieldChange
from bot.engine.values import same_value
from bot.ledger.repo import AuditEvent, Ledger, utcnow
from bot.policy import Policy

log = logging.getLogger(__name__)

Z95 = 1.959963984540054


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval: honest for small samples and for precision near 0 or 1."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def judge(before: Any, proposed: Any, history: list[FieldChange] | None, now_value: Any, since: datetime) -> tuple[str, Any, str]:
    """(outcome, the value people set or left, basis) for one shadowed change."""
    if history:
        human = [h for h in history if h.at >= since and h.source != "integration"]
        if not human:
            return "unchanged", now_value, "history"
        latest = human[0]  # newest first
        return ("agreed" if same_value(latest.value, proposed) else "disagreed"), latest.value, "history"
    if same_value(now_value, before):
        return "unchanged", now_value, "current"
    return ("agreed" if same_value(now_value, proposed) else "disagreed"), now_value, "current"


@dataclass(frozen=True)
class FieldReport:
    object: str
    field: str
    tier: str
    mode: str
    proposals: int
    agreed: int
    disagreed: int
    unchanged: int
    waiting: int
    precision: float | None
    ci_low: float | None
    ci_high: float | None
    min_samples: int
    min_precision: float
    promotable: bool
    verdict: str


class Shadow:
    def __init__(
        self,
        ledger: Ledger,
        crm: CRM,
        policy: Policy,
        crm_name: str,
        *,
        owner: str,
        delay: timedelta = timedelta(hours=24),
        lease: timedelta = timedelta(seconds=60),
        metrics: Any = None,
    ) -> None:
        self.ledger = ledger
        self.crm = crm
        self.policy = policy
        self.crm_name = crm_name
        self.owner = owner
        self.delay = delay
        self.lease = lease
        self.metrics = metrics

    async def capture(self) -> int:
        """Record the CRM's current value next to each new shadowed change (the diff log)."""
        rows = await self.ledger.claim_shadow(self.owner, "capture", 200, self.lease, older_than=None)
        if not rows:
            return 0
        by_object: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_object[row["object_type"]].append(row)
        for object_type, group in by_object.items():
            try:
                records = await self.crm.read_records(
                    object_type, sorted({r["record_id"] for r in group}), sorted({r["field"] for r in group})
                )
            except CRMError as exc:
                log.warning("shadow capture for %s deferred: %s", object_type, exc.message)
                await self.ledger.release([r["id"] for r in group], self.owner, delay=timedelta(seconds=exc.retry_after or 10))
                continue
            await self.ledger.save_shadow_capture(
                {
                    r["id"]: (records[r["record_id"]].values.get(r["field"]) if r["record_id"] in records else None)
                    for r in group
                },
                self.owner,
            )
        return len(rows)

    async def evaluate(self, *, now: datetime | None = None, ignore_delay: bool = False) -> int:
        """Judge shadowed changes whose window has passed; returns how many were judged."""
        now = now or utcnow()
        cutoff = None if ignore_delay else now - self.delay
        total = 0
        while True:
            rows = await self.ledger.claim_shadow(self.owner, "evaluate", 50, self.lease, older_than=cutoff)
            if not rows:
                return total
            total += len(rows)
            by_object: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for row in rows:
                by_object[row["object_type"]].append(row)
            for object_type, group in by_object.items():
                ids = sorted({r["record_id"] for r in group})
                fields = sorted({r["field"] for r in group})
                try:
                    records = await self.crm.read_records(object_type, ids, fields)
                    history = await self.crm.read_history(object_type, ids, fields)
                except CRMError as exc:
                    log.warning("shadow evaluation for %s deferred: %s", object_type, exc.message)
                    await self.ledger.release([r["id"] for r in group], self.owner, delay=timedelta(seconds=exc.retry_after or 30))
                    continue
                outcomes = []
                for r in group:
                    state = records.get(r["record_id"])
                    now_value = state.values.get(r["field"]) if state else None
                    trail = history.get(r["record_id"], {}).get(r["field"])
                    outcome, value, basis = judge(r["before"], r["proposed"], trail, now_value, r["created_at"])
                    if state is None:
                        outcome, basis = "unchanged", "missing"
                    outcomes.append(
                        {
                            "change_id": r["id"],
                            "outcome": outcome,
                            "human_value": value,
                            "basis": basis,
                            "object_type": object_type,
                            "field": r["field"],
                        }
                    )
                    if self.metrics is not None:
                        self.metrics.shadow.labels(object_type, r["field"], outcome).inc()
                await self.ledger.save_shadow_outcomes(
                    outcomes, self.owner, AuditEvent("shadow.evaluated", "shadow", data={"changes": len(outcomes)})
                )

    async def report(self, since: datetime) -> list[FieldReport]:
        counts = await self.ledger.shadow_counts(since)
        reports = []
        for (object_type, field), c in sorted(counts.items()):
            rule = self.policy.classify(self.crm_name, object_type, field)
            decided = c["agreed"] + c["disagreed"]
            precision = c["agreed"] / decided if decided else None
            low, high = wilson(c["agreed"], decided) if decided else (None, None)
            gate = rule.promotion
            if decided < gate.min_samples:
                verdict = f"not yet: {decided} judged proposal(s) of the {gate.min_samples} required"
                promotable = False
            elif low is not None and low < gate.min_precision:
                verdict = (
                    f"no: precision {precision:.0%} (95% CI {low:.0%}-{high:.0%}); its lower bound is below "
                    f"the required {gate.min_precision:.0%}"
                )
                promotable = False
            else:
                verdict = f"yes: precision {precision:.0%} (95% CI {low:.0%}-{high:.0%}) over {decided} judged proposals"
                promotable = True
            reports.append(
                FieldReport(
                    object=object_type,
                    field=field,
                    tier=rule.tier.value,
                    mode=rule.mode.value,
                    proposals=c["proposals"],
                    agreed=c["agreed"],
                    disagreed=c["disagreed"],
                    unchanged=c["unchanged"],
                    waiting=c["waiting"],
                    precision=precision,
                    ci_low=low,
                    ci_high=high,
                    min_samples=gate.min_samples,
                    min_precision=gate.min_precision,
                    promotable=promotable,
                    verdict=verdict,
                )
            )
        return reports


@dataclass(frozen=True)
class LiveReport:
    """How a live field is doing: reviewers' verdicts, or how often its writes are rolled back."""

    object: str
    field: str
    tier: str
    decided: int
    approval_rate: float | None
    edit_rate: float | None
    rejection_rate: float | None
    expired: int
    committed: int
    rollback_rate: float | None


async def live_report(ledger: Ledger, since: datetime) -> list[LiveReport]:
    reports = []
    for (object_type, field, tier), c in sorted((await ledger.live_counts(since)).items()):
        decided = c["decided"]

        def rate(n: int, total: int) -> float | None:
            return n / total if total else None

        reports.append(
            LiveReport(
                object=object_type,
                field=field,
                tier=tier,
                decided=decided,
                approval_rate=rate(c["approved"], decided) if tier == "reviewed" else None,
                edit_rate=rate(c["edited"], decided) if tier == "reviewed" else None,
                rejection_rate=rate(c["rejected"], decided) if tier == "reviewed" else None,
                expired=c["expired"],
                committed=c["committed"],
                rollback_rate=rate(c["rolled_back"], c["committed"]) if tier == "autonomous" else None,
            )
        )
    return reports


def report_json(reports: list[FieldReport], since: datetime, live: list[LiveReport] | None = None) -> dict[str, Any]:
    return {
        "since": since.isoformat(),
        "fields": [asdict(r) for r in reports],
        "promotable": [f"{r.object}.{r.field}" for r in reports if r.promotable],
        "live": [asdict(r) for r in live or []],
    }


def live_table(reports: list[LiveReport]) -> str:
    if not reports:
        return "No live agent writes in this window."

    def pct(value: float | None) -> str:
        return f"{value:.0%}" if value is not None else "-"

    header = f"{'live field':<32} {'tier':<11} {'decided':>7} {'approve':>8} {'edit':>6} {'reject':>7} {'expired':>7} {'written':>8} {'rolled back':>11}"
    lines = [header, "-" * len(header)]
    for r in reports:
        lines.append(
            f"{r.object + '.' + r.field:<32} {r.tier:<11} {r.decided:>7} {pct(r.approval_rate):>8} "
            f"{pct(r.edit_rate):>6} {pct(r.rejection_rate):>7} {r.expired:>7} {r.committed:>8} {pct(r.rollback_rate):>11}"
        )
    return "\n".join(lines)


def report_table(reports: list[FieldReport], since: datetime) -> str:
    if not reports:
        return f"No shadowed proposals since {since:%Y-%m-%d %H:%M} UTC."
    header = f"{'field':<32} {'n':>5} {'agree':>6} {'disag':>6} {'unchg':>6} {'wait':>5} {'precision':>10} {'95% CI':>13}  promote?"
    lines = [f"Shadow report since {since:%Y-%m-%d %H:%M} UTC", header, "-" * len(header)]
    for r in reports:
        precision = f"{r.precision:.1%}" if r.precision is not None else "-"
        ci = f"{r.ci_low:.0%}-{r.ci_high:.0%}" if r.ci_low is not None else "-"
        lines.append(
            f"{r.object + '.' + r.field:<32} {r.proposals:>5} {r.agreed:>6} {r.disagreed:>6} {r.unchanged:>6} "
            f"{r.waiting:>5} {precision:>10} {ci:>13}  {r.verdict}"
        )
    ready = [f"{r.object}.{r.field}" for r in reports if r.promotable]
    lines.append("")
    lines.append("May be promoted to live: " + (", ".join(ready) if ready else "none yet."))
    return "\n".join(lines)
