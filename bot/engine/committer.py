"""The committer: takes queued changes from the ledger and writes them to the CRM safely.

For each batch it leases changes from the database (so replicas never share one), reads the
current values in one batch call (the before-images), applies the stale guard, records the
`committing` recovery point, writes in one batch call, and records each outcome.

A change found in `committing` with an expired lease was caught mid-commit by a crash. Recovery
re-reads the CRM: the target value -> committed; still the before-image -> write again;
anything else -> conflict for a person. Nothing is written twice, nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.domain import ChangeKind, ChangeStatus
from bot.engine.governor import Pace
from bot.engine.ports import CRM, Activity, CRMError, CRMErrorKind
from bot.engine.values import preview, same_value
from bot.ledger.repo import AuditEvent, ChangeWork, Ledger, new_id, utcnow

log = logging.getLogger(__name__)

Move = tuple[str, ChangeStatus, ChangeStatus, dict[str, Any], AuditEvent | None]


def _activity(item: ChangeWork) -> Activity:
    body = item.target or {}
    return Activity(kind=item.field, body=body.get("body", ""), subject=body.get("subject"), due=body.get("due"))


@dataclass
class CommitStats:
    committed: int = 0
    conflicts: int = 0
    failed: int = 0
    deferred: int = 0


class Committer:
    def __init__(
        self,
        ledger: Ledger,
        crm: CRM,
        *,
        owner: str,
        batch_size: int = 100,
        linger: timedelta = timedelta(milliseconds=50),
        lease: timedelta = timedelta(seconds=60),
        interval: timedelta = timedelta(seconds=1),
    ) -> None:
        self.ledger = ledger
        self.crm = crm
        self.owner = owner
        self.batch_size = batch_size
        self.linger = linger.total_seconds()
        self.lease = lease
        self.interval = interval.total_seconds()
        self._wake = asyncio.Event()
        self.on_alert: Any = lambda: None
        self.on_outcome: Any = lambda: None  # reviewed changes' messages show outcomes
        self.metrics: Any = None
        # Spaces passes under load so commits spend at most their share of the CRM budget and
        # each pass carries more changes (see `bot.engine.governor.Pace`); None: no spacing.
        self.pace: Pace | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Commit until `stop` is set: woken by intake, and every `interval` for other replicas'
        work and for recovery of expired leases."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
                # Let a burst gather so it goes to the CRM as one batch.
                await asyncio.sleep(self.linger)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                while not stop.is_set() and await self.paced_pass() >= self.batch_size:
                    pass
            except Exception:
                log.exception("committer pass failed; retrying")
                await asyncio.sleep(1)

    async def paced_pass(self) -> int:
        """`run_once` when the pace allows: while it waits, the batch grows."""
        if self.pace is None:
            return await self.run_once()
        if not await self.ledger.changes_to_commit():  # look before spending the pace
            return 0
        await self.pace.start()
        async with self.pace.spending():
            return await self.run_once()

    async def run_once(self) -> int:
        """Lease one batch and commit it; returns how many changes were leased."""
        work = await self.ledger.claim_changes(self.owner, self.batch_size, self.lease)
        if not work:
            return 0
        by_object: dict[str, list[ChangeWork]] = defaultdict(list)
        activities = []
        deletions = []
        for item in work:
            if item.kind == ChangeKind.ACTIVITY:
                activities.append(item)
            elif item.kind == ChangeKind.COMPENSATION and isinstance(item.target, dict):
                deletions.append(item)  # the compensation of an activity deletes it
            else:
                by_object[item.object_type].append(item)
        activities_by_object: dict[str, list[ChangeWork]] = defaultdict(list)
        for item in activities:
            activities_by_object[item.object_type].append(item)
        # The groups touch different CRM endpoints and different ledger rows: they go side by
        # side, so a note does not wait for the field writes of its pass.
        outcomes = await asyncio.gather(
            *(self._commit_fields(o, items) for o, items in by_object.items()),
            *(self._commit_activities(o, items) for o, items in activities_by_object.items()),
            *(self._delete_activity(item) for item in deletions),
            return_exceptions=True,
        )
        self.on_outcome()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(work)

    # --- fields --------------------------------------------------------------------------------
    async def _commit_fields(self, object_type: str, items: list[ChangeWork]) -> None:
        # One write per (record, field) per batch: a later change to the same field waits.
        batch: list[ChangeWork] = []
        seen: set[tuple[str, str]] = set()
        later: list[str] = []
        for item in items:
            key = (item.record_id, item.field)
            if key in seen:
                later.append(item.id)
            else:
                seen.add(key)
                batch.append(item)
        await self.ledger.release(later, self.owner, delay=timedelta(0))

        fields = sorted({item.field for item in batch})
        records = sorted({item.record_id for item in batch})
        try:
            current = await self.crm.read_records(object_type, records, fields)
        except CRMError as exc:
            await self._defer(batch, exc)
            return

        moves: list[Move] = []
        to_write: list[ChangeWork] = []
        alerts: list[dict[str, Any]] = []
        for item in batch:
            state = current.get(item.record_id)
            if state is None:
                moves.append(self._fail(item, f"record {item.record_id} not found in the CRM"))
                continue
            now_value = state.values.get(item.field)
            if item.status == ChangeStatus.COMMITTING:
                # Recovery: a write may or may not have landed before the crash.
                if same_value(now_value, item.target):
                    moves.append(self._committed(item, recovered=True))
                elif same_value(now_value, item.before):
                    to_write.append(item)
                else:
                    message = (
                        f"after an interrupted commit the CRM holds {preview(now_value)!r}, neither the "
                        f"before-image {preview(item.before)!r} nor the target {preview(item.target)!r}"
                    )
                    moves.append(self._conflict(item, now_value, message))
                    alerts.append(self._alert("conflict", item, message))
                continue
            if item.kind == ChangeKind.COMPENSATION and same_value(now_value, item.target):
                moves.append(self._already(item, now_value))  # reverted meanwhile, by anyone
            elif item.has_observed and not same_value(item.observed, now_value):
                seen_by = "the gate wrote" if item.kind == ChangeKind.COMPENSATION else "the agent observed"
                moves.append(
                    self._conflict(
                        item,
                        now_value,
                        f"{seen_by} {preview(item.observed)!r} but the CRM holds {preview(now_value)!r}",
                    )
                )
            elif item.has_shown and not same_value(item.shown, now_value):
                moves.append(
                    self._conflict(
                        item,
                        now_value,
                        f"the reviewer was shown {preview(item.shown)!r} but the CRM now holds {preview(now_value)!r}",
                    )
                )
            elif same_value(now_value, item.target):
                moves.append(self._already(item, now_value))
            else:
                item.before = now_value
                to_write.append(item)

        # The recovery point: before-images are durable before any write is sent.
        fresh = [i for i in to_write if i.status == ChangeStatus.QUEUED]
        moved = await self._move(
            [
                (
                    i.id,
                    ChangeStatus.QUEUED,
                    ChangeStatus.COMMITTING,
                    {"before": i.before, "before_captured": True},
                    AuditEvent(
                        "change.committing", "committer", i.proposal_id, i.id, {"before": i.before}
                    ),
                )
                for i in fresh
            ]
            + moves,
            batch,
            alert_rows=alerts,
        )
        if alerts:
            self.on_alert()
        writing = [i for i in to_write if i.status == ChangeStatus.COMMITTING or i.id in moved]
        for i in writing:
            i.status = ChangeStatus.COMMITTING
        if not writing:
            return

        updates: dict[str, dict[str, Any]] = defaultdict(dict)
        for i in writing:
            updates[i.record_id][i.field] = i.target
        try:
            results = await self.crm.update_records(object_type, updates)
        except CRMError as exc:
            # Unknown outcome for transient errors: the changes stay `committing`, and recovery
            # re-reads before writing again.
            await self._defer(writing, exc)
            return

        finals: list[Move] = []
        failed_alerts = []
        for i in writing:
            error = results.get(i.record_id)
            if error is None and i.record_id in results:
                finals.append(self._committed(i))
            elif error is not None and error.retryable:
                await self._defer([i], error)
            else:
                message = error.message if error else "the CRM gave no result for this record"
                finals.append(self._fail(i, message, from_status=ChangeStatus.COMMITTING))
                failed_alerts.append(self._alert("failed", i, message))
        await self._move(finals, writing, alert_rows=failed_alerts)
        if failed_alerts:
            self.on_alert()

    # --- activities ----------------------------------------------------------------------------
    async def _commit_activities(self, object_type: str, items: list[ChangeWork]) -> None:
        """Create notes and tasks in as few CRM calls as the CRM allows."""
        interrupted = [i for i in items if i.status == ChangeStatus.COMMITTING]
        if interrupted:
            # Whether the CRM created them before the crash cannot be known without a marker:
            # a person checks, rather than risking a duplicate note or task.
            message = "interrupted while creating this activity; check the record for a duplicate or a gap"
            await self._move(
                [self._conflict(i, None, message, from_status=ChangeStatus.COMMITTING) for i in interrupted],
                interrupted,
                alert_rows=[self._alert("conflict", i, message) for i in interrupted],
            )
            self.on_alert()
        fresh = [i for i in items if i.status == ChangeStatus.QUEUED]
        moved = set(
            await self._move(
                [
                    (
                        i.id,
                        ChangeStatus.QUEUED,
                        ChangeStatus.COMMITTING,
                        {"before": None, "before_captured": True},
                        AuditEvent("change.committing", "committer", i.proposal_id, i.id, {}),
                    )
                    for i in fresh
                ],
                fresh,
            )
        )
        creating = [i for i in fresh if i.id in moved]
        if not creating:
            return
        for i in creating:
            i.status = ChangeStatus.COMMITTING
        try:
            results = await self.crm.create_activities(
                object_type, [(i.record_id, _activity(i)) for i in creating]
            )
        except CRMError as exc:
            if exc.kind == CRMErrorKind.RATE_LIMITED:
                # Refused before anything was created: safe to try again from `queued`.
                await self.ledger.transition(
                    [
                        (i.id, ChangeStatus.COMMITTING, ChangeStatus.QUEUED, {"before_captured": False}, None)
                        for i in creating
                    ],
                    owner=self.owner,
                )
                await self._defer(creating, exc)
            elif exc.retryable:
                await self._defer(creating, exc)
            else:
                await self._move(
                    [self._fail(i, exc.message, from_status=ChangeStatus.COMMITTING) for i in creating],
                    creating,
                    alert_rows=[self._alert("failed", i, exc.message) for i in creating],
                )
                self.on_alert()
            return
        finals: list[Move] = []
        failed = []
        for item, result in zip(creating, results, strict=True):
            if isinstance(result, CRMError):
                finals.append(self._fail(item, result.message, from_status=ChangeStatus.COMMITTING))
                failed.append(self._alert("failed", item, result.message))
            else:
                finals.append(self._committed(item, activity_id=result))
        await self._move(finals, creating, alert_rows=failed)
        if failed:
            self.on_alert()

    async def _delete_activity(self, item: ChangeWork) -> None:
        """Compensate a note or task: delete it. Deleting is idempotent (gone is gone), so an
        interrupted deletion is simply tried again."""
        if item.status == ChangeStatus.QUEUED:
            moved = await self.ledger.transition(
                [
                    (
                        item.id,
                        ChangeStatus.QUEUED,
                        ChangeStatus.COMMITTING,
                        {"before": item.target, "before_captured": True},
                        AuditEvent("change.committing", "committer", item.proposal_id, item.id, {}),
                    )
                ],
                owner=self.owner,
            )
            if not moved:
                return
            item.status = ChangeStatus.COMMITTING
        item.before = item.target
        try:
            await self.crm.delete_activity(item.field, str(item.target["delete_activity"]))
        except CRMError as exc:
            if exc.kind != CRMErrorKind.NOT_FOUND:
                if exc.retryable:
                    await self._defer([item], exc)
                else:
                    await self._move(
                        [self._fail(item, exc.message, from_status=ChangeStatus.COMMITTING)],
                        [item],
                        alert_rows=[self._alert("failed", item, exc.message)],
                    )
                    self.on_alert()
                return
        await self._move([self._committed(item)], [item])

    # --- helpers -------------------------------------------------------------------------------
    async def _move(self, moves: list[Move], items: list[ChangeWork], **kwargs: Any) -> list[str]:
        """Transition, then count the outcomes that happened."""
        moved = await self.ledger.transition(moves, owner=self.owner, **kwargs)
        if self.metrics is not None and moved:
            now = utcnow()
            by_id = {i.id: i for i in items}
            for change_id, _old, new, _values, _event in moves:
                item = by_id.get(change_id)
                if change_id in moved and item is not None and new != ChangeStatus.COMMITTING:
                    if item.kind == ChangeKind.COMPENSATION:
                        self.metrics.rollbacks.labels(new.value).inc()
                    else:
                        self.metrics.outcome(item.object_type, item.field, item.tier, new.value, item.created_at, now)
        return moved

    async def _defer(self, items: list[ChangeWork], exc: CRMError) -> None:
        if exc.kind == CRMErrorKind.RATE_LIMITED and exc.retry_after:
            delay = exc.retry_after
        else:
            attempts = max(i.attempts for i in items)
            delay = min(60.0, 0.5 * 2 ** min(attempts, 7)) * (0.5 + random.random())
        log.warning(
            "CRM %s: %d change(s) retried in %.1fs: %s",
            exc.kind.value,
            len(items),
            delay,
            exc.message,
        )
        await self.ledger.release([i.id for i in items], self.owner, delay=timedelta(seconds=delay))

    def _already(self, item: ChangeWork, now_value: Any) -> Move:
        """The CRM already holds the value: committed without a write."""
        return (
            item.id,
            ChangeStatus.QUEUED,
            ChangeStatus.COMMITTED,
            self._done_values(item, before=now_value, written=item.target),
            AuditEvent(
                "change.committed",
                "committer",
                item.proposal_id,
                item.id,
                {"noop": True, "before": now_value, "written": item.target},
            ),
        )

    def _done_values(
        self, item: ChangeWork, *, before: Any, written: Any, **extra: Any
    ) -> dict[str, Any]:
        return {
            "before": before,
            "before_captured": True,
            "written": written,
            "committed_at": utcnow(),
            "error": None,
            "lease_expires": None,
            **extra,
        }

    def _committed(
        self, item: ChangeWork, *, recovered: bool = False, activity_id: str | None = None
    ) -> Move:
        values = self._done_values(item, before=item.before, written=item.target)
        if activity_id is not None:
            values["activity_id"] = activity_id
        return (
            item.id,
            ChangeStatus.COMMITTING,
            ChangeStatus.COMMITTED,
            values,
            AuditEvent(
                "change.recovered" if recovered else "change.committed",
                "committer",
                item.proposal_id,
                item.id,
                {"before": item.before, "written": item.target, "activity_id": activity_id},
            ),
        )

    def _conflict(
        self,
        item: ChangeWork,
        now_value: Any,
        message: str,
        *,
        from_status: ChangeStatus | None = None,
    ) -> Move:
        return (
            item.id,
            from_status or item.status,
            ChangeStatus.CONFLICT,
            {"error": message, "lease_expires": None},
            AuditEvent(
                "change.conflict",
                "committer",
                item.proposal_id,
                item.id,
                {"current": now_value, "message": message},
            ),
        )

    def _fail(
        self, item: ChangeWork, message: str, *, from_status: ChangeStatus | None = None
    ) -> Move:
        return (
            item.id,
            from_status or item.status,
            ChangeStatus.FAILED,
            {"error": message[:4000], "lease_expires": None},
            AuditEvent(
                "change.failed", "committer", item.proposal_id, item.id, {"message": message[:4000]}
            ),
        )

    def _alert(self, kind: str, item: ChangeWork, message: str) -> dict[str, Any]:
        icon = ":warning:" if kind == "conflict" else ":x:"
        what = "Conflict" if kind == "conflict" else "Commit failed"
        return {
            "id": new_id("alr"),
            "kind": kind,
            "text": (
                f"{icon} {what}: `{item.field}` on {item.object_type} {item.record_id} "
                f"(agent *{item.agent}*, change {item.id}): {preview(message, 500)}"
            ),
        }
