"""Rollback: compensating changes built from the ledger's before-images.

A rollback is previewed first (what would be reverted, and which changes are conflicts: a person
edited the field after the agent wrote it), then confirmed. Confirming queues one compensating
change per reverted change, on the same proposal, linked to the change it reverts. The committer
writes them like any change (batched, before-image captured, stale guard: the CRM must still
hold the value we wrote unless the operator forced it), so a rollback can itself be rolled back,
and running the same rollback twice writes nothing the second time.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bot.config import parse_duration
from bot.domain import ChangeKind, ChangeStatus
from bot.engine.ports import CRM
from bot.engine.values import preview, same_value
from bot.ledger.repo import AuditEvent, Ledger, new_id, utcnow

HELP = """\
`/crm-rollback <target>` previews, then undoes agent writes after you confirm. Targets:
• `chg_…` one change    • `prp_…` every change of one proposal
• `run:<run_id>` every change of one agent run
• `agent:<name> since:<when>` an agent's changes since a time (`2026-11-30T09:00Z`) or for a while (`2h`, `3d`)
• `rb_…` undo an earlier rollback
Only fields that still hold the agent's value are reverted; the others are conflicts (a person
edited them since) and are left alone unless you include them."""


class TargetError(ValueError):
    """The rollback target cannot be understood or matches nothing."""


@dataclass(frozen=True)
class RollbackItem:
    change_id: str
    proposal_id: str
    object_type: str
    record_id: str
    field: str
    kind: str  # field | activity | compensation
    written: Any
    restore: Any  # the before-image to write back (activities: deleted)
    now: Any
    verdict: str  # revert | conflict | already | missing; unchecked: the CRM was not read


@dataclass(frozen=True)
class RollbackPlan:
    id: str
    target: str
    items: tuple[RollbackItem, ...]

    def count(self, verdict: str) -> int:
        return sum(1 for i in self.items if i.verdict == verdict)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    now = now or utcnow()
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TargetError(f"since:{text} is neither a time (2026-11-30T09:00Z) nor a duration (2h)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


_AGENT = re.compile(r"^agent:(\S+)\s+since:(\S+)$")


class Rollbacks:
    def __init__(
        self,
        ledger: Ledger,
        crm: CRM,
        *,
        on_queued: Callable[[], None] = lambda: None,
        on_alert: Callable[[], None] = lambda: None,
    ) -> None:
        self.ledger = ledger
        self.crm = crm
        self.on_queued = on_queued
        self.on_alert = on_alert

    async def targets(self, target: str) -> list[dict[str, Any]]:
        """The changes a target names (committed, not yet reverted)."""
        target = " ".join(target.split())
        if target.startswith("chg_"):
            rows = await self.ledger.rollback_candidates(change_id=target)
        elif target.startswith("prp_"):
            rows = await self.ledger.rollback_candidates(proposal_id=target)
        elif target.startswith("rb_"):
            rows = await self.ledger.rollback_candidates(rollback_id=target)
        elif target.startswith("run:") and len(target) > 4:
            rows = await self.ledger.rollback_candidates(run_id=target[4:])
        elif match := _AGENT.match(target):
            rows = await self.ledger.rollback_candidates(agent=match.group(1), since=parse_since(match.group(2)))
        else:
            raise TargetError(f"cannot read the target {target!r}. " + HELP.splitlines()[0])
        if not rows:
            raise TargetError(f"nothing to roll back for {target}: no committed change that is not already reverted")
        return rows

    async def preview(self, target: str, actor: str, *, check: bool = True) -> RollbackPlan:
        """The plan: what would be reverted, and (reading the CRM) what a person changed since,
        for someone to confirm. With `check=False` nothing is read: every field change is
        `unchecked`, and the committer's guard sorts reverts from conflicts as it writes (it
        reads each record right before writing anyway). For a confirmation given in advance
        (`rollback --yes`), this halves the CRM reads and leaves conflicts alone just the same."""
        rows = await self.targets(target)
        items = await self._classify(rows) if check else [_unchecked(row) for row in rows]
        plan = RollbackPlan(new_id("rb"), " ".join(target.split()), tuple(items))
        await self.ledger.create_rollback(
            plan.id,
            target=plan.target,
            requested_by=actor,
            plan=[asdict(i) for i in items],
            event=AuditEvent(
                "rollback.previewed",
                actor,
                data={"rollback_id": plan.id, "target": plan.target, **Counter(i.verdict for i in items)},
            ),
        )
        return plan

    async def _classify(self, rows: list[dict[str, Any]]) -> list[RollbackItem]:
        by_object: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            if row["kind"] != ChangeKind.ACTIVITY.value:
                by_object[row["object_type"]].append(row)
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for object_type, group in by_object.items():
            records = await self.crm.read_records(
                object_type, sorted({r["record_id"] for r in group}), sorted({r["field"] for r in group})
            )
            for record_id, state in records.items():
                current[(object_type, record_id)] = state.values
        items = []
        for row in rows:
            if row["kind"] == ChangeKind.ACTIVITY.value:
                verdict, now = "revert", row["activity_id"]
            else:
                values = current.get((row["object_type"], row["record_id"]))
                now = values.get(row["field"]) if values is not None else None
                if values is None:
                    verdict = "missing"
                elif same_value(now, row["written"]):
                    verdict = "revert"
                elif same_value(now, row["before"]):
                    verdict = "already"
                else:
                    verdict = "conflict"
            items.append(_item(row, now=now, verdict=verdict))
        return items

    async def confirm(self, rollback_id: str, actor: str, *, include_conflicts: bool = False) -> int:
        """Queue the compensating changes (once: a second confirm queues nothing)."""
        rollback = await self.ledger.rollback(rollback_id)
        if rollback is None:
            raise TargetError(f"no rollback {rollback_id}")
        wanted = {"revert", "unchecked", "conflict"} if include_conflicts else {"revert", "unchecked"}
        items = [i for i in rollback["plan"] if i["verdict"] in wanted]
        queued = await self.ledger.confirm_rollback(
            rollback_id,
            actor=actor,
            include_conflicts=include_conflicts,
            items=items,
            event=AuditEvent(
                "rollback.confirmed",
                actor,
                data={"rollback_id": rollback_id, "changes": len(items), "include_conflicts": include_conflicts},
            ),
        )
        if queued:
            self.on_queued()
        return queued

    async def refused(self, actor: str, target: str) -> None:
        """Someone who is not ops tried to roll back: recorded, nothing else."""
        await self.ledger.audit(AuditEvent("rollback.refused", actor, data={"target": target}))

    async def cancel(self, rollback_id: str, actor: str) -> bool:
        return await self.ledger.cancel_rollback(
            rollback_id, AuditEvent("rollback.cancelled", actor, data={"rollback_id": rollback_id})
        )

    async def status(self, rollback_id: str) -> dict[str, Any]:
        """Counts by outcome for a confirmed rollback, and whether it is finished."""
        rollback = await self.ledger.rollback(rollback_id)
        if rollback is None:
            raise TargetError(f"no rollback {rollback_id}")
        compensations = await self.ledger.rollback_changes(rollback_id)
        counts = Counter(c["status"] for c in compensations)
        plan = rollback["plan"]
        skipped = [i for i in plan if i["verdict"] == "conflict" and not rollback["include_conflicts"]]
        failures = [
            {"change_id": c["reverts_change_id"], "field": c["field"], "error": c["error"]}
            for c in compensations
            if c["status"] in (ChangeStatus.FAILED.value, ChangeStatus.CONFLICT.value)
        ]
        settled = rollback["state"] in ("confirmed", "done") and not (
            counts[ChangeStatus.QUEUED.value] + counts[ChangeStatus.COMMITTING.value]
        )
        return {
            "id": rollback_id,
            "target": rollback["target"],
            "state": rollback["state"],
            "settled": settled,
            "total": len(compensations),
            "reverted": counts[ChangeStatus.COMMITTED.value],
            "pending": counts[ChangeStatus.QUEUED.value] + counts[ChangeStatus.COMMITTING.value],
            "conflicts": counts[ChangeStatus.CONFLICT.value] + len(skipped),
            "failed": counts[ChangeStatus.FAILED.value],
            "already": sum(1 for i in plan if i["verdict"] == "already"),
            "missing": sum(1 for i in plan if i["verdict"] == "missing"),
            "failures": failures,
            "requested_by": rollback["requested_by"],
        }

    async def wait(
        self, rollback_id: str, *, within: float = 300.0, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            status = await self.status(rollback_id)
            if progress:
                progress(status)
            if status["settled"] or loop.time() > deadline:
                return status
            await asyncio.sleep(0.2)

    async def finish_settled(self) -> int:
        """Close confirmed rollbacks whose compensations are all done: store the summary and put
        one line in the alerts channel. Runs as a job, so a restart loses no summary."""
        finished = 0
        for rollback_id in await self.ledger.confirmed_rollbacks():
            status = await self.status(rollback_id)
            if not status["settled"]:
                continue
            line = (
                f":rewind: {_who(status['requested_by'])} rolled back `{status['target']}` ({rollback_id}): "
                f"{status['reverted']} reverted, {status['conflicts']} conflict(s) left alone, "
                f"{status['failed']} failed."
            )
            if status["failures"]:
                line += " First failure: " + preview(status["failures"][0]["error"], 200)
            if await self.ledger.finish_rollback(
                rollback_id,
                summary={k: v for k, v in status.items() if k != "failures"} | {"failures": status["failures"][:50]},
                alert={"id": new_id("alr"), "kind": "rollback", "text": line},
                event=AuditEvent("rollback.finished", status["requested_by"], data={"rollback_id": rollback_id}),
            ):
                finished += 1
        if finished:
            self.on_alert()
        return finished


def _item(row: dict[str, Any], *, now: Any, verdict: str) -> RollbackItem:
    return RollbackItem(
        change_id=row["id"],
        proposal_id=row["proposal_id"],
        object_type=row["object_type"],
        record_id=row["record_id"],
        field=row["field"],
        kind=row["kind"],
        written=row["written"],
        restore=None if row["kind"] == ChangeKind.ACTIVITY.value else row["before"],
        now=now,
        verdict=verdict,
    )


def _unchecked(row: dict[str, Any]) -> RollbackItem:
    """An item planned without reading the CRM: activities are deleted, fields checked later."""
    if row["kind"] == ChangeKind.ACTIVITY.value:
        return _item(row, now=row["activity_id"], verdict="revert")
    return _item(row, now=None, verdict="unchecked")


def _who(actor: str) -> str:
    """Slack user ids become mentions; other actors (cli:NAME) are named as they are."""
    return f"<@{actor}>" if re.fullmatch(r"[UW][A-Z0-9]+", actor) else actor
