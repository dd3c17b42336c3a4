"""The gate's vocabulary: tiers, modes, the change state machine and the agent-facing models.

These pydantic models are also the source of the OpenAPI document served at /openapi.json.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class Tier(StrEnum):
    READ_ONLY = "read_only"
    AUTONOMOUS = "autonomous"
    REVIEWED = "reviewed"
    NEVER_AUTONOMOUS = "never_autonomous"


class Mode(StrEnum):
    LIVE = "live"
    SHADOW = "shadow"


class ChangeKind(StrEnum):
    FIELD = "field"  # an agent's field write
    ACTIVITY = "activity"  # a note or task the agent creates
    COMPENSATION = "compensation"  # a rollback of an earlier change


class ChangeStatus(StrEnum):
    QUEUED = "queued"  # waiting for the committer
    COMMITTING = "committing"  # before-image captured; a CRM write may be in flight
    COMMITTED = "committed"
    CONFLICT = "conflict"  # the CRM no longer held the value the agent or reviewer saw
    FAILED = "failed"  # the CRM refused the write
    PENDING_REVIEW = "pending_review"
    REJECTED = "rejected"
    EXPIRED = "expired"
    BLOCKED = "blocked"  # never_autonomous
    REFUSED = "refused"  # read_only, or a field the CRM cannot take
    SHADOWED = "shadowed"


TERMINAL = frozenset(
    {
        ChangeStatus.COMMITTED,
        ChangeStatus.CONFLICT,
        ChangeStatus.FAILED,
        ChangeStatus.REJECTED,
        ChangeStatus.EXPIRED,
        ChangeStatus.BLOCKED,
        ChangeStatus.REFUSED,
        ChangeStatus.SHADOWED,
    }
)

# Which transitions the ledger allows; everything else is a bug.
TRANSITIONS: dict[ChangeStatus, frozenset[ChangeStatus]] = {
    ChangeStatus.QUEUED: frozenset(
        {ChangeStatus.COMMITTING, ChangeStatus.CONFLICT, ChangeStatus.FAILED}
    ),
    ChangeStatus.COMMITTING: frozenset(
        {ChangeStatus.COMMITTED, ChangeStatus.CONFLICT, ChangeStatus.FAILED, ChangeStatus.QUEUED}
    ),
    ChangeStatus.PENDING_REVIEW: frozenset(
        {ChangeStatus.QUEUED, ChangeStatus.REJECTED, ChangeStatus.EXPIRED, ChangeStatus.REFUSED}
    ),
}

Scalar = str | int | float | bool | None
FieldName = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z][A-Za-z0-9_.]*$")
]
ShortText = Annotated[str, StringConstraints(max_length=2000)]


class ActivityIn(BaseModel):
    """A note or task the agent wants created on the record."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["note", "task"]
    body: Annotated[str, StringConstraints(min_length=1, max_length=65536)]
    subject: Annotated[str, StringConstraints(max_length=255)] | None = None
    due: Annotated[str, StringConstraints(max_length=40)] | None = Field(
        default=None, description="Tasks only: ISO 8601 due date."
    )


class ProposalIn(BaseModel):
    """What an agent posts to /v1/proposals."""

    model_config = ConfigDict(extra="forbid")

    object: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="CRM-native object type: deals, contacts, companies, Opportunity, Lead..."
    )
    record_id: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    ]
    changes: dict[FieldName, Scalar] = Field(
        default_factory=dict, description="Field API name -> proposed value."
    )
    observed: dict[FieldName, Scalar] | None = Field(
        default=None,
        description="Field -> value the agent read. A different value at commit time is a conflict.",
    )
    activities: list[ActivityIn] = Field(default_factory=list, max_length=20)
    reason: ShortText | None = None
    evidence: list[Annotated[str, StringConstraints(max_length=2000)]] = Field(
        default_factory=list, max_length=20, description="Links or short quotes backing the change."
    )
    run_id: Annotated[str, StringConstraints(max_length=200)] | None = None
    callback_url: (
        Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://")] | None
    ) = None


class ChangeOut(BaseModel):
    id: str
    kind: ChangeKind
    field: str
    tier: Tier
    mode: Mode
    status: ChangeStatus
    reason: str | None = Field(default=None, description="Why it was refused, blocked or failed.")


class ProposalAccepted(BaseModel):
    """The 202 answer to a proposal."""

    id: str
    status: Literal["accepted"] = "accepted"
    changes: list[ChangeOut]


class ChangeDetail(ChangeOut):
    proposed: Any = None
    observed: Any = None
    approved: Any = None
    before: Any = Field(
        default=None, description="The before-image: the CRM's value before the write."
    )
    written: Any = None
    error: str | None = None
    activity_id: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    committed_at: datetime | None = None
    updated_at: datetime


class ProposalDetail(BaseModel):
    id: str
    agent: str
    crm: str
    object: str
    record_id: str
    reason: str | None
    evidence: list[str]
    run_id: str | None
    callback_url: str | None
    created_at: datetime
    changes: list[ChangeDetail]


class ErrorBody(BaseModel):
    class Detail(BaseModel):
        code: str
        message: str
        field: str | None = None

    error: Detail
