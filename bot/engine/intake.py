"""Intake: classify each change of a proposal by the policy and store it all in one transaction.

Nothing here talks to the CRM: intake answers fast, and the committer does the CRM work after.
The answer is stored with the idempotency key, so a replay gets exactly the same answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.domain import (
    ChangeKind,
    ChangeOut,
    ChangeStatus,
    Mode,
    ProposalAccepted,
    ProposalIn,
    Tier,
)
from bot.engine.schema import validate_value
from bot.engine.values import preview
from bot.ledger.repo import (
    Agent,
    AuditEvent,
    Ledger,
    StoredResponse,
    canonical_json,
    new_id,
    utcnow,
)
from bot.policy import Policy, Rule


class ProposalRejected(Exception):
    """The proposal as a whole is unacceptable (HTTP 4xx); nothing is stored."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def request_hash(body: Any) -> str:
    """Fingerprint of a request body: the same JSON, however spaced or ordered, hashes the same."""
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@dataclass(frozen=True)
class Classified:
    kind: ChangeKind
    field: str
    rule: Rule
    status: ChangeStatus
    reason: str | None
    proposed: Any


class Intake:
    def __init__(
        self,
        ledger: Ledger,
        policy: Policy,
        crm: str,
        *,
        max_changes: int,
        on_queued: Callable[[], None] = lambda: None,
        on_alert: Callable[[], None] = lambda: None,
        on_review: Callable[[], None] = lambda: None,
        review_expiry: timedelta = timedelta(hours=24),
        reminder_before: timedelta | None = None,
        callbacks_enabled: bool = True,
        schemas: Any = None,
        blocked_fields: Callable[[], dict[tuple[str, str], str]] = dict,
        metrics: Any = None,
    ) -> None:
        self.ledger = ledger
        self.policy = policy
        self.crm = crm  # the policy section: hubspot or salesforce
        self.max_changes = max_changes
        self.on_queued = on_queued
        self.on_alert = on_alert
        self.on_review = on_review
        self.review_expiry = review_expiry
        self.reminder_before = reminder_before
        self.callbacks_enabled = callbacks_enabled
        self.schemas = schemas  # a SchemaCache: values are checked against the CRM's schema
        self.blocked_fields = blocked_fields  # fields the schema watch found gone or read-only
        self.metrics = metrics

    def check(self, proposal: ProposalIn) -> None:
        """Whole-proposal checks that pydantic cannot make; raise ProposalRejected."""
        if self.policy.object(self.crm, proposal.object) is None:
            known = ", ".join(sorted(self.policy.objects.get(self.crm, {}))) or "none"
            raise ProposalRejected(
                422,
                "unknown_object",
                f"unknown object {proposal.object!r} for {self.crm} (known: {known})",
                "object",
            )
        if proposal.callback_url and not self.callbacks_enabled:
            raise ProposalRejected(
                422,
                "callbacks_disabled",
                "callback_url is set but the gate has no CALLBACK_SIGNING_SECRET to sign callbacks with",
                "callback_url",
            )
        count = len(proposal.changes) + len(proposal.activities)
        if count == 0:
            raise ProposalRejected(
                422, "empty_proposal", "the proposal has no changes and no activities", "changes"
            )
        if count > self.max_changes:
            raise ProposalRejected(
                422,
                "too_many_changes",
                f"{count} changes in one proposal; at most {self.max_changes} are allowed",
                "changes",
            )
        for name in proposal.observed or {}:
            if name not in proposal.changes:
                raise ProposalRejected(
                    422,
                    "observed_without_change",
                    f"observed.{name} is given but {name!r} is not among the changes",
                    f"observed.{name}",
                )

    def classify(self, proposal: ProposalIn) -> list[Classified]:
        out = []
        blocked = self.blocked_fields()
        # Only a schema already in the cache is used: intake never waits for the CRM.
        schema = self.schemas.peek(proposal.object) if self.schemas is not None else None
        for name, value in proposal.changes.items():
            rule = self.policy.classify(self.crm, proposal.object, name)
            item = self._classified(ChangeKind.FIELD, name, rule, value, proposal.object)
            if item.status != ChangeStatus.REFUSED:
                problem = blocked.get((proposal.object, name))
                if problem is None and schema is not None:
                    spec = schema.get(name)
                    problem = (
                        f"field {name!r} does not exist on {proposal.object} in the CRM"
                        if spec is None
                        else f"field {name!r} is read-only in the CRM"
                        if not spec.writable
                        else validate_value(spec, value)
                    )
                if problem:
                    item = Classified(item.kind, name, rule, ChangeStatus.REFUSED, problem, value)
            out.append(item)
        for activity in proposal.activities:
            rule = self.policy.classify_activity(self.crm, proposal.object, activity.kind)
            body = activity.model_dump(exclude_none=True)
            out.append(
                self._classified(ChangeKind.ACTIVITY, activity.kind, rule, body, proposal.object)
            )
        return out

    def _classified(
        self, kind: ChangeKind, name: str, rule: Rule, value: Any, object_type: str
    ) -> Classified:
        what = f"{'activity' if kind == ChangeKind.ACTIVITY else 'field'} {name!r} of {object_type}"
        if rule.tier == Tier.READ_ONLY:
            status, reason = (
                ChangeStatus.REFUSED,
                f"{what} is read_only: tiers.yaml does not allow agents to write it",
            )
        elif rule.mode == Mode.SHADOW:
            status, reason = ChangeStatus.SHADOWED, f"{what} is in shadow mode: logged, not written"
        elif rule.tier == Tier.NEVER_AUTONOMOUS:
            status, reason = (
                ChangeStatus.BLOCKED,
                f"{what} is never_autonomous: only a person may change it",
            )
        elif rule.tier == Tier.REVIEWED:
            status, reason = ChangeStatus.PENDING_REVIEW, None
        else:
            status, reason = ChangeStatus.QUEUED, None
        return Classified(kind, name, rule, status, reason, value)

    async def submit(
        self, agent: Agent, key: str, body: dict[str, Any], proposal: ProposalIn
    ) -> StoredResponse:
        """Store a validated proposal (or find the earlier answer for this key)."""
        fingerprint = request_hash(body)
        try:
            self.check(proposal)
        except ProposalRejected:
            # Accepted once, before the policy changed: a replay still gets the first answer.
            stored = await self.ledger.replay(agent.id, key, fingerprint)
            if stored is None:
                raise
            return stored
        classified = self.classify(proposal)
        proposal_id = new_id("prp")
        observed = proposal.observed or {}
        change_rows: list[dict[str, Any]] = []
        outs: list[ChangeOut] = []
        events = [
            AuditEvent(
                "proposal.received",
                f"agent:{agent.name}",
                proposal_id,
                data={
                    "object": proposal.object,
                    "record_id": proposal.record_id,
                    "changes": len(proposal.changes),
                    "activities": len(proposal.activities),
                    "run_id": proposal.run_id,
                    "idempotency_key": key,
                },
            )
        ]
        alert_rows = []
        for seq, item in enumerate(classified):
            change_id = new_id("chg")
            change_rows.append(
                {
                    "id": change_id,
                    "proposal_id": proposal_id,
                    "seq": seq,
                    "kind": item.kind.value,
                    "field": item.field,
                    "tier": item.rule.tier.value,
                    "mode": item.rule.mode.value,
                    "status": item.status.value,
                    "reason": item.reason,
                    "proposed": item.proposed,
                    "has_observed": item.field in observed and item.kind == ChangeKind.FIELD,
                    "observed": observed.get(item.field) if item.kind == ChangeKind.FIELD else None,
                    "attempts": 0,
                }
            )
            outs.append(
                ChangeOut(
                    id=change_id,
                    kind=item.kind,
                    field=item.field,
                    tier=item.rule.tier,
                    mode=item.rule.mode,
                    status=item.status,
                    reason=item.reason,
                )
            )
            events.append(
                AuditEvent(
                    "change.blocked"
                    if item.status == ChangeStatus.BLOCKED
                    else "change.classified",
                    "policy",
                    proposal_id,
                    change_id,
                    {
                        "field": item.field,
                        "tier": item.rule.tier.value,
                        "mode": item.rule.mode.value,
                        "status": item.status.value,
                    },
                )
            )
            if item.status == ChangeStatus.BLOCKED:
                alert_rows.append(
                    {
                        "id": new_id("alr"),
                        "kind": "blocked",
                        "text": (
                            f":no_entry: Blocked a never_autonomous write: agent *{agent.name}* tried to set "
                            f"`{item.field}` on {proposal.object} {proposal.record_id} to "
                            f"`{preview(item.proposed)}`."
                            + (
                                f" Agent's reason: {preview(proposal.reason, 300)}"
                                if proposal.reason
                                else ""
                            )
                            + f" (proposal {proposal_id})"
                        ),
                    }
                )
        answer = ProposalAccepted(id=proposal_id, changes=outs).model_dump(mode="json")
        review: dict[str, Any] = {"review_state": "none", "expires_at": None, "remind_at": None}
        needs_review = any(i.status == ChangeStatus.PENDING_REVIEW for i in classified)
        if needs_review:
            now = utcnow()
            expires = now + self.review_expiry
            review = {
                "review_state": "unrouted",
                "expires_at": expires,
                "remind_at": expires - self.reminder_before
                if self.reminder_before and self.reminder_before < self.review_expiry
                else None,
            }
        stored = await self.ledger.record_proposal(
            agent_id=agent.id,
            key=key,
            request_hash=fingerprint,
            proposal={
                "id": proposal_id,
                "agent_id": agent.id,
                "crm": self.crm,
                "object_type": proposal.object,
                "record_id": proposal.record_id,
                "reason": proposal.reason,
                "evidence": list(proposal.evidence),
                "run_id": proposal.run_id,
                "callback_url": proposal.callback_url,
                **review,
            },
            change_rows=change_rows,
            events=events,
            alert_rows=alert_rows,
            status=202,
            body=answer,
        )
        if not stored.replayed and self.metrics is not None:
            self.metrics.received(proposal.object, change_rows)
        if not stored.replayed and any(i.status == ChangeStatus.QUEUED for i in classified):
            self.on_queued()
        if not stored.replayed and alert_rows:
            self.on_alert()
        if not stored.replayed and needs_review:
            self.on_review()
        return stored
