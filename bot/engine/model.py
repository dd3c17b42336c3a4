"""What a review looks like to a person, as plain data. The engine builds these from the ledger;
the Slack face renders them (`bot.slack.blocks`), and so could any other face."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class FieldSpec:
    """How a field is edited: from the CRM's schema, captured when the review was routed."""

    name: str
    label: str
    type: str  # string, text, number, date, datetime, enumeration, bool
    options: tuple[tuple[str, str], ...] = ()  # (value, label)

    def option_label(self, value: Any) -> str | None:
        for option_value, label in self.options:
            if option_value == value:
                return label
        return None


@dataclass(frozen=True)
class ReviewLine:
    """One change under review."""

    change_id: str
    field: FieldSpec
    kind: str  # field | activity
    current: Any  # the value shown to the reviewer (the CRM's value when the review was sent)
    proposed: Any
    status: str  # pending_review, queued, committing, committed, conflict, failed, rejected, expired
    approved: Any = None  # differs from `proposed` when the reviewer edited it
    edited: bool = False
    error: str | None = None  # the CRM's message, or what the conflict was
    now_value: Any = None  # the CRM's value at a conflict
    rolled_back_by: str | None = None


@dataclass(frozen=True)
class ReviewView:
    proposal_id: str
    object_type: str
    record_id: str
    record_name: str | None
    record_url: str | None
    agent: str
    reason: str | None
    evidence: tuple[str, ...]
    run_id: str | None
    created_at: datetime
    expires_at: datetime | None
    state: str  # pending, decided, expired
    lines: tuple[ReviewLine, ...]
    reviewer_id: str | None = None  # Slack user id of the record owner, when found
    route_note: str | None = None  # why the review is in the fallback channel
    decision: str | None = None  # approved, edited, rejected, expired
    decided_by: str | None = None  # Slack user id
    decided_at: datetime | None = None
    reject_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return self.record_name or f"{self.object_type} {self.record_id}"
