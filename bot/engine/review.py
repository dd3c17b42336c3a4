"""Reviews: route reviewed changes to the record owner, take exactly one decision, keep the
message true to the ledger, expire what nobody decided.

Every step is a small job that leases its proposal in the database, so any replica can run any
of them and none runs twice. The message a reviewer sees is always rendered from the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.domain import ChangeStatus, Tier
from bot.engine.governor import Pace
from bot.engine.model import FieldSpec, ReviewLine, ReviewView
from bot.engine.ports import CRM, CRMError, FieldSchema, Owner, RecordState, ReviewChannel
from bot.ledger.repo import OPEN_REVIEW_STATES, AuditEvent, Ledger, new_id, utcnow
from bot.policy import Policy

log = logging.getLogger(__name__)

# While the committer works on a just-decided proposal, wait this long for its outcome so the
# reviewer's message is updated once, with the result, instead of twice.
SETTLE_GRACE = timedelta(seconds=5)
OWNER_TTL = 300.0  # seconds a record owner's person (email, name) is trusted


@dataclass(frozen=True)
class Decision:
    """What happened to a click or a submission."""

    outcome: str  # decided | not_yours | already_decided | not_found | wrong_message | invalid
    view: ReviewView | None = None
    message: str | None = None


class Reviews:
    def __init__(
        self,
        ledger: Ledger,
        crm: CRM,
        policy: Policy,
        crm_name: str,
        channel: ReviewChannel,
        *,
        owner: str,
        describe: Callable[[str], Awaitable[dict[str, FieldSchema]]] | None = None,
        fallback_channel: str | None = None,
        user_map: dict[str, str] | None = None,
        delegates: Iterable[str] = (),
        ops_users: Iterable[str] = (),
        ops_group: str | None = None,
        lease: timedelta = timedelta(seconds=60),
        interval: timedelta = timedelta(seconds=1),
    ) -> None:
        self.ledger = ledger
        self.crm = crm
        self.policy = policy
        self.crm_name = crm_name
        self.channel = channel
        self.owner = owner
        self.describe = describe or crm.describe
        self.fallback_channel = fallback_channel
        self.user_map = {k.lower(): v for k, v in (user_map or {}).items()}
        self.delegates = set(delegates)
        self.ops_users = set(ops_users)
        self.ops_group = ops_group
        self.lease = lease
        self.interval = interval.total_seconds()
        self.on_decided: Callable[[], None] = lambda: None
        self.on_alert: Callable[[], None] = lambda: None
        self.metrics: Any = None
        self._wake = asyncio.Event()
        self._owner_cache: dict[str, tuple[float, Owner]] = {}  # owner id -> (good until, person)
        self._clock: Callable[[], float] = time.monotonic
        # Spaces routing passes under load (see `bot.engine.governor.Pace`); None: no spacing.
        self.pace: Pace | None = None
        self._route_after = -math.inf  # the pace's last answer: no pass before this (loop time)

    def wake(self) -> None:
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Woken by new reviews, decisions and commit outcomes, and every `interval`. Expiry and
        reminders fall due by the clock alone, so a wake runs them only when an interval has
        passed: under load intake wakes this loop for every reviewed proposal."""
        loop = asyncio.get_running_loop()
        timed_at = -math.inf
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            jobs = [self.paced_route]
            if loop.time() - timed_at >= self.interval:
                timed_at = loop.time()
                jobs += [self.expire_due, self.remind_due]
            jobs.append(self.sync_messages)
            for job in jobs:
                try:
                    await job()
                except Exception:
                    log.exception("review job %s failed; retrying", job.__name__)

    # --- reading -------------------------------------------------------------------------------
    async def view(self, proposal_id: str) -> ReviewView | None:
        row = await self.ledger.proposal(proposal_id)
        return build_view(row) if row else None

    async def home(self, user_id: str, *, limit: int = 20) -> tuple[list[ReviewView], list[ReviewView]]:
        """The user's pending reviews (all open ones for ops) and their recent decisions."""
        is_ops = await self.is_ops(user_id)
        pending_ids = await self.ledger.open_reviews(None if is_ops else user_id, limit)
        recent_ids = await self.ledger.reviews_decided_by(user_id, limit)
        pending = [v for v in [await self.view(i) for i in pending_ids] if v]
        recent = [v for v in [await self.view(i) for i in recent_ids] if v]
        return pending, recent

    async def is_ops(self, user_id: str) -> bool:
        if user_id in self.ops_users:
            return True
        if self.ops_group:
            try:
                return user_id in await self.channel.group_members(self.ops_group)
            except Exception:  # the group lookup is a convenience; the explicit list still works
                log.warning("could not read the ops user group %s", self.ops_group)
        return False

    async def may_decide(self, view: ReviewView, user_id: str) -> bool:
        return user_id == view.reviewer_id or user_id in self.delegates or await self.is_ops(user_id)

    # --- routing -------------------------------------------------------------------------------
    async def paced_route(self) -> int:
        """`route_pending` when the pace allows; otherwise the loop is woken when it will, and
        the reviews that arrive meanwhile are read from the CRM together."""
        if self.pace is None:
            return await self.route_pending()
        loop = asyncio.get_running_loop()
        if loop.time() < self._route_after:
            return 0  # the pace said when; its timer wakes the loop then
        if not await self.ledger.reviews_to_route():
            return 0
        wait = await self.pace.ready_in()
        if wait > 0:
            # A wait is never too long (see `SqlBudgetStore.take`): looking again sooner is
            # pointless, however often new reviews wake the loop meanwhile.
            self._route_after = loop.time() + wait
            loop.call_later(wait, self._wake.set)
            return 0
        async with self.pace.spending():
            return await self.route_pending()

    async def route_pending(self) -> int:
        ids = await self.ledger.claim_reviews_to_route(self.owner, 100, self.lease)
        rows = [row for row in [await self.ledger.proposal(i) for i in ids] if row is not None]
        # One CRM read per object for every review claimed together, not one per review.
        by_object: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_object[row["object_type"]].append(row)
        for object_type, group in by_object.items():
            try:
                records, owners = await self._prefetch(object_type, [r for r in group if r["review_state"] == "unrouted"])
            except CRMError as exc:
                await self._retry_later([r["id"] for r in group], exc)
                continue
            for row in group:
                try:
                    await self._route(row, records, owners)
                except CRMError as exc:
                    await self._retry_later([row["id"]], exc)
                except Exception:
                    log.exception("routing %s failed; retry later", row["id"])
                    await self.ledger.release_proposal(row["id"], self.owner, delay=timedelta(seconds=10))
        return len(ids)

    async def _retry_later(self, proposal_ids: list[str], exc: CRMError) -> None:
        delay = exc.retry_after or 5.0
        log.warning("routing %d review(s): CRM %s (%s); retry in %.0fs", len(proposal_ids), exc.kind.value, exc.message, delay)
        for proposal_id in proposal_ids:
            await self.ledger.release_proposal(proposal_id, self.owner, delay=timedelta(seconds=delay))

    async def _prefetch(
        self, object_type: str, rows: list[dict[str, Any]]
    ) -> tuple[dict[str, RecordState], dict[str, Owner]]:
        if not rows:
            return {}, {}
        obj = self.policy.object(self.crm_name, object_type)
        fields = {
            c["field"]
            for row in rows
            for c in row["changes"]
            if c["status"] == ChangeStatus.PENDING_REVIEW.value and c["kind"] == "field"
        }
        if obj and obj.name_field:
            fields.add(obj.name_field)
        if obj and obj.owner_field:
            fields.add(obj.owner_field)  # read with the record: its owner costs no second read
        record_ids = sorted({row["record_id"] for row in rows})
        # A record is read even when only activities are under review: it must exist.
        records = await self.crm.read_records(object_type, record_ids, sorted(fields) or ["id"])
        if not (obj and obj.owner_field):
            return records, {}
        owner_ids = {rid: str(state.values.get(obj.owner_field) or "") for rid, state in records.items()}
        people = await self._people(sorted({o for o in owner_ids.values() if o}))
        owners = {rid: people[oid] for rid, oid in owner_ids.items() if oid in people}
        return records, owners

    async def _people(self, owner_ids: list[str]) -> dict[str, Owner]:
        """Owner id -> person, from the CRM for ids not looked up in the last OWNER_TTL seconds."""
        now = self._clock()
        missing = [o for o in owner_ids if (hit := self._owner_cache.get(o)) is None or hit[0] <= now]
        if missing:
            found = await self.crm.owners(missing)
            for owner_id in missing:
                self._owner_cache[owner_id] = (now + OWNER_TTL, found.get(owner_id, Owner(owner_id, None)))
        return {o: self._owner_cache[o][1] for o in owner_ids}

    async def _route(self, row: dict[str, Any], records: dict[str, RecordState], owners: dict[str, Owner]) -> None:
        proposal_id = row["id"]
        if row["review_state"] == "pending":
            await self._post(row, row["review_channel"])
            return
        object_type, record_id = row["object_type"], row["record_id"]
        obj = self.policy.object(self.crm_name, object_type)
        pending = [c for c in row["changes"] if c["status"] == ChangeStatus.PENDING_REVIEW.value]
        field_names = [c["field"] for c in pending if c["kind"] == "field"]
        name_field = obj.name_field if obj else None
        state = records.get(record_id)
        if state is None:
            message = f"record {record_id} not found in the CRM; nothing to review"
            await self.ledger.close_review(
                proposal_id,
                from_states=["unrouted"],
                to_state="closed",
                change_status=ChangeStatus.REFUSED,
                reason=message,
                event=AuditEvent("review.closed", "reviews", proposal_id, data={"reason": message}),
            )
            return
        schema = await self.describe(object_type)
        review_fields = {name: _spec_json(schema.get(name), name) for name in field_names} | {
            c["field"]: {"label": c["field"].title(), "type": "text", "options": []}
            for c in pending
            if c["kind"] == "activity"
        }

        found = owners.get(record_id)
        email = found.email if found else None
        reviewer = self.user_map.get(email.lower()) if email else None
        if reviewer is None and email:
            reviewer = await self.channel.find_user(email)

        note = None
        if reviewer:
            target: str | None = await self.channel.open_dm(reviewer)
        else:
            if email:
                note = f"the record owner ({email}) has no Slack user"
            elif found:
                note = f"the record owner ({found.name or found.id}) has no email in the CRM"
            else:
                note = "the record has no owner in the CRM"
            target = self.fallback_channel
        shown = {c["id"]: state.values.get(c["field"]) for c in pending if c["kind"] == "field"}
        values: dict[str, Any] = {
            "reviewer_id": reviewer,
            "reviewer_email": email,
            "route_note": note,
            "record_name": (str(state.values.get(name_field) or "") or None) if name_field else None,
            "record_url": self.crm.record_url(object_type, record_id),
            "review_fields": review_fields,
            "review_channel": target,
        }
        if target is None:
            text = (
                f":warning: A review cannot be delivered: {note}, and REVIEW_FALLBACK_CHANNEL is not set. "
                f"Proposal {proposal_id} ({object_type} {record_id}, agent {row['agent']}) stays pending until it "
                "expires; ops can decide it from the App Home."
            )
            await self.ledger.save_route(
                proposal_id,
                self.owner,
                state="unroutable",
                shown=shown,
                event=AuditEvent("review.unroutable", "reviews", proposal_id, data={"reason": note}),
                alert_rows=[{"id": new_id("alr"), "kind": "unroutable", "text": text}],
                **values,
            )
            await self.ledger.release_proposal(proposal_id, self.owner)
            self.on_alert()
            return
        routed = await self.ledger.save_route(
            proposal_id,
            self.owner,
            state="pending",
            shown=shown,
            event=AuditEvent(
                "review.sent",
                "reviews",
                proposal_id,
                data={"reviewer": reviewer, "channel": target, "note": note, "shown": shown},
            ),
            **values,
        )
        if routed:
            fresh = await self.ledger.proposal(proposal_id)
            assert fresh is not None
            await self._post(fresh, target)

    async def _post(self, row: dict[str, Any], target: str) -> None:
        message_id = await self.channel.post_review(target, build_view(row))
        await self.ledger.save_review_message(row["id"], self.owner, message_id, row["message_version"])

    # --- deciding ------------------------------------------------------------------------------
    async def decide(
        self,
        proposal_id: str,
        actor: str,
        action: str,
        *,
        edits: dict[str, Any] | None = None,
        reason: str | None = None,
        source: tuple[str, str] | None = None,
    ) -> Decision:
        """Approve, edit (approve with values) or reject. `source` is the (channel, message id)
        the click came from, when it came from a message: it must be this review's message."""
        view = await self.view(proposal_id)
        if view is None or view.state == "none":
            return Decision("not_found", message="There is no such review.")
        if source is not None and not _same_message(source, view):
            return Decision("wrong_message", view, "This button does not belong to that review.")
        if not await self.may_decide(view, actor):
            log.warning("%s tried to decide %s, which is not theirs", actor, proposal_id)
            await self.ledger.audit(
                AuditEvent("review.refused", f"slack:{actor}", proposal_id, data={"action": action})
            )
            return Decision("not_yours", view)
        if view.state not in OPEN_REVIEW_STATES:
            return Decision("already_decided", view)
        pending = {line.change_id: line for line in view.lines if line.status == ChangeStatus.PENDING_REVIEW.value}
        edits = edits or {}
        unknown = set(edits) - {cid for cid, line in pending.items() if line.kind == "field"}
        if unknown:
            # Only the stored proposal says what may be written.
            return Decision("invalid", view, "Those values are not part of this review.")
        if action == "reject":
            decision, approved = "rejected", {}
        else:
            approved = {cid: edits.get(cid, line.proposed) for cid, line in pending.items()}
            edited = any(cid in edits and edits[cid] != pending[cid].proposed for cid in edits)
            decision = "edited" if edited else "approved"
        events = [
            AuditEvent(
                "review.decided",
                f"slack:{actor}",
                proposal_id,
                data={"decision": decision, "reason": reason},
            )
        ] + [
            AuditEvent(
                "change.rejected" if decision == "rejected" else "change.approved",
                f"slack:{actor}",
                proposal_id,
                cid,
                {} if decision == "rejected" else {"approved": approved[cid], "proposed": pending[cid].proposed},
            )
            for cid in pending
        ]
        won = await self.ledger.decide(
            proposal_id, actor=actor, decision=decision, approved=approved, reject_reason=reason, events=events
        )
        if not won:
            return Decision("already_decided", await self.view(proposal_id))
        if self.metrics is not None:
            now = utcnow()
            self.metrics.review_latency.observe(max(0.0, (now - view.created_at).total_seconds()))
            if decision == "rejected":
                for line in pending.values():
                    self.metrics.outcome(view.object_type, line.field.name, Tier.REVIEWED.value, "rejected", None, now)
        self.on_decided()
        self.wake()
        return Decision("decided", await self.view(proposal_id))

    # --- keeping the message true --------------------------------------------------------------
    async def sync_messages(self) -> int:
        ids = await self.ledger.claim_reviews_to_sync(self.owner, 20, self.lease)
        for proposal_id in ids:
            row = await self.ledger.proposal(proposal_id)
            assert row is not None
            busy = any(c["status"] in ("queued", "committing") for c in row["changes"] if c["tier"] == Tier.REVIEWED.value)
            decided_at = row["decided_at"]
            if busy and decided_at and utcnow() - decided_at < SETTLE_GRACE:
                await self.ledger.release_proposal(proposal_id, self.owner, delay=timedelta(milliseconds=200))
                continue
            try:
                await self.channel.update_review(row["review_channel"], row["review_ts"], build_view(row))
            except Exception as exc:  # Slack errors vary; the update is retried later
                log.warning("could not update the review message of %s: %s", proposal_id, exc)
                await self.ledger.release_proposal(proposal_id, self.owner, delay=timedelta(seconds=5))
                continue
            await self.ledger.mark_synced(proposal_id, row["message_version"], self.owner)
        return len(ids)

    async def expire_due(self) -> int:
        now = utcnow()
        ids = await self.ledger.reviews_to_expire(now, 50)
        count = 0
        for proposal_id in ids:
            if await self.ledger.close_review(
                proposal_id,
                from_states=["unrouted", *OPEN_REVIEW_STATES],
                to_state="expired",
                change_status=ChangeStatus.EXPIRED,
                reason="nobody decided before the review expired",
                decision="expired",
                event=AuditEvent("review.expired", "reviews", proposal_id),
            ):
                count += 1
                expired = await self.view(proposal_id) if self.metrics is not None else None
                if expired is not None:
                    for line in expired.lines:
                        if line.status == ChangeStatus.EXPIRED.value:
                            self.metrics.outcome(
                                expired.object_type, line.field.name, Tier.REVIEWED.value, "expired", None, now
                            )
        return count

    async def remind_due(self) -> int:
        now = utcnow()
        ids = await self.ledger.reviews_to_remind(now, 50)
        count = 0
        for proposal_id in ids:
            if not await self.ledger.mark_reminded(proposal_id):
                continue
            view = await self.view(proposal_id)
            if view is None:
                continue
            try:
                await self.channel.remind(view.extra["review_channel"], view.extra["review_ts"], view)
                count += 1
            except Exception as exc:  # a missed reminder is not worth a retry storm
                log.warning("reminder for %s failed: %s", proposal_id, exc)
        return count


def _same_message(source: tuple[str, str], view: ReviewView) -> bool:
    channel, ts = view.extra.get("review_channel"), view.extra.get("review_ts")
    # The message id is recorded just after posting; a click in that instant names the channel.
    return source[0] == channel and (ts is None or source[1] == ts)


def _spec_json(schema: FieldSchema | None, name: str) -> dict[str, Any]:
    if schema is None:
        return {"label": name, "type": "string", "options": []}
    return {
        "label": schema.label or name,
        "type": schema.type,
        "options": [[o.value, o.label] for o in schema.options],
    }


def _with_shown(rows: list[dict[str, Any]], shown: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**c, "has_shown": c["id"] in shown or c["has_shown"], "shown": shown.get(c["id"], c["shown"])} for c in rows]


def build_view(row: dict[str, Any]) -> ReviewView:
    """The review as a person sees it, from a ledger row (`Ledger.proposal`)."""
    specs = row.get("review_fields") or {}
    rolled_back_by = {
        c["reverts_change_id"]: c["decided_by"]
        for c in row["changes"]
        if c["kind"] == "compensation" and c["status"] == ChangeStatus.COMMITTED.value
    }
    lines = []
    for c in row["changes"]:
        if (
            c["tier"] != Tier.REVIEWED.value
            or c["kind"] == "compensation"
            or c["status"] in ("refused", "blocked", "shadowed")
        ):
            continue
        spec = specs.get(c["field"]) or {"label": c["field"], "type": "string", "options": []}
        approved = c["approved"] if c["decided_at"] and c["status"] != "rejected" else None
        lines.append(
            ReviewLine(
                change_id=c["id"],
                field=FieldSpec(c["field"], spec["label"], spec["type"], tuple(tuple(o) for o in spec["options"])),
                kind=c["kind"],
                current=c["shown"] if c["has_shown"] else None,
                proposed=c["proposed"],
                status=c["status"],
                approved=approved,
                edited=c["decided_at"] is not None and c["status"] != "rejected" and approved != c["proposed"],
                error=c["error"],
                rolled_back_by=rolled_back_by.get(c["id"]),
            )
        )
    state = row["review_state"]
    return ReviewView(
        proposal_id=row["id"],
        object_type=row["object_type"],
        record_id=row["record_id"],
        record_name=row.get("record_name"),
        record_url=row.get("record_url"),
        agent=row["agent"],
        reason=row["reason"],
        evidence=tuple(row["evidence"] or ()),
        run_id=row["run_id"],
        created_at=row["created_at"],
        expires_at=row.get("expires_at"),
        state="pending" if state in ("unrouted", *OPEN_REVIEW_STATES) else state,
        lines=tuple(lines),
        reviewer_id=row.get("reviewer_id"),
        route_note=row.get("route_note"),
        decision=row.get("decision"),
        decided_by=row.get("decided_by"),
        decided_at=row.get("decided_at"),
        reject_reason=row.get("reject_reason"),
        extra={
            "review_channel": row.get("review_channel"),
            "review_ts": row.get("review_ts"),
            "review_state": state,
        },
    )

