"""The ledger's tables. The schema states its invariants (unique keys, allowed states) so the
database, not hope, enforces them. Migrations in `migrations/versions` create exactly this.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator

from bot.domain import ChangeKind, ChangeStatus, Mode, Tier

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _in(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which stores no zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Ts = UTCDateTime()

agents = Table(
    "agents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("created_at", Ts, nullable=False),
    Column("revoked_at", Ts),
)

proposals = Table(
    "proposals",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("agent_id", String(40), ForeignKey("agents.id"), nullable=False),
    Column("crm", String(20), nullable=False),
    Column("object_type", String(100), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("reason", Text),
    Column("evidence", JSON, nullable=False),
    Column("run_id", String(200)),
    Column("callback_url", Text),
    Column("created_at", Ts, nullable=False),
    # --- review (only for proposals with reviewed changes) ---
    # none -> unrouted -> pending | unroutable -> decided | expired; closed when it cannot be
    # reviewed at all (the record is gone)
    Column("review_state", String(20), nullable=False, default="none"),
    Column("reviewer_id", String(40)),  # Slack user id of the record owner
    Column("reviewer_email", String(320)),
    Column("route_note", Text),
    Column("review_channel", String(40)),
    Column("review_ts", String(40)),
    Column("record_name", Text),
    Column("record_url", Text),
    Column("review_fields", JSON),  # field -> {label, type, options}: the CRM schema at routing
    Column("expires_at", Ts),
    Column("remind_at", Ts),
    Column("reminded_at", Ts),
    Column("decision", String(20)),
    Column("decided_by", String(40)),
    Column("decided_at", Ts),
    Column("reject_reason", Text),
    Column("message_version", Integer, nullable=False, default=0),  # bumped when the message must change
    Column("message_synced", Integer, nullable=False, default=0),  # the version Slack shows
    Column("lease_owner", String(64)),
    Column("lease_expires", Ts),
    CheckConstraint(
        _in("review_state", ["none", "unrouted", "pending", "unroutable", "decided", "expired", "closed"]),
        name="review_state",
    ),
    CheckConstraint(
        "decision IS NULL OR decision IN ('approved', 'edited', 'rejected', 'expired')", name="decision"
    ),
    Index("ix_proposals_review", "review_state", "expires_at"),
    # Review messages that no longer show what the ledger holds: a handful at any time, looked
    # for every second.
    Index(
        "ix_proposals_unsynced",
        "id",
        sqlite_where=text("message_version > message_synced"),
        postgresql_where=text("message_version > message_synced"),
    ),
    Index("ix_proposals_reviewer", "reviewer_id", "review_state"),
    Index("ix_proposals_run", "run_id"),
    Index("ix_proposals_agent_created", "agent_id", "created_at"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("agent_id", String(40), ForeignKey("agents.id"), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("proposal_id", String(40), ForeignKey("proposals.id"), nullable=False),
    Column("response_status", Integer, nullable=False),
    Column("response_body", JSON, nullable=False),
    Column("created_at", Ts, nullable=False),
    PrimaryKeyConstraint("agent_id", "key"),
)

changes = Table(
    "changes",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("proposal_id", String(40), ForeignKey("proposals.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("field", String(100), nullable=False),
    Column("tier", String(20), nullable=False),
    Column("mode", String(10), nullable=False),
    Column("status", String(20), nullable=False),
    Column("reason", Text),  # why refused / blocked
    Column("proposed", JSON),
    Column("has_observed", Boolean, nullable=False, default=False),
    Column("observed", JSON),
    Column("has_shown", Boolean, nullable=False, default=False),
    Column("shown", JSON),  # the current value a reviewer was shown; a change since is a conflict
    Column("approved", JSON),  # the value a reviewer approved (differs from proposed after Edit)
    Column("before_captured", Boolean, nullable=False, default=False),
    Column("before", JSON),  # the before-image
    Column("written", JSON),
    Column("error", Text),
    Column("activity_id", String(64)),
    Column("reverts_change_id", String(40), ForeignKey("changes.id")),
    Column("rollback_id", String(40), ForeignKey("rollbacks.id")),
    Column("decided_by", String(100)),
    Column("decided_at", Ts),
    Column("committed_at", Ts),
    Column("lease_owner", String(64)),
    Column("lease_expires", Ts),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Ts, nullable=False),
    Column("updated_at", Ts, nullable=False),
    UniqueConstraint("proposal_id", "seq"),
    CheckConstraint(_in("status", [s.value for s in ChangeStatus]), name="status"),
    CheckConstraint(_in("kind", [k.value for k in ChangeKind]), name="kind"),
    CheckConstraint(_in("tier", [t.value for t in Tier]), name="tier"),
    CheckConstraint(_in("mode", [m.value for m in Mode]), name="mode"),
    # A committed write always has its before-image.
    CheckConstraint("status <> 'committed' OR before_captured", name="committed_has_before"),
    Index("ix_changes_status_lease", "status", "lease_expires"),
    Index("ix_changes_queue", "status", "created_at", "seq"),  # the committer's claim order
    Index("ix_changes_reverts", "reverts_change_id"),
    Index("ix_changes_rollback", "rollback_id"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", Ts, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("kind", String(50), nullable=False),
    Column("proposal_id", String(40)),
    Column("change_id", String(40)),
    Column("data", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Index("ix_audit_proposal", "proposal_id"),
)

rollbacks = Table(
    "rollbacks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("target", Text, nullable=False),
    Column("requested_by", String(200), nullable=False),
    Column("state", String(20), nullable=False),  # previewed -> confirmed -> done | cancelled
    Column("include_conflicts", Boolean, nullable=False, default=False),
    Column("plan", JSON, nullable=False),  # the preview: what would be reverted, what conflicts
    Column("summary", JSON),
    Column("created_at", Ts, nullable=False),
    Column("confirmed_at", Ts),
    Column("finished_at", Ts),
    CheckConstraint(_in("state", ["previewed", "confirmed", "done", "cancelled"]), name="state"),
    Index("ix_rollbacks_state", "state"),
)

shadow_outcomes = Table(
    "shadow_outcomes",
    metadata,
    Column("change_id", String(40), ForeignKey("changes.id"), primary_key=True),
    Column("outcome", String(20), nullable=False),
    Column("human_value", JSON),
    Column("basis", String(20), nullable=False),  # history | current | missing
    Column("evaluated_at", Ts, nullable=False),
    CheckConstraint(_in("outcome", ["agreed", "disagreed", "unchanged"]), name="outcome"),
)

drift_alarms = Table(
    "drift_alarms",
    metadata,
    Column("key", String(300), primary_key=True),  # object.field.metric, or volume:object
    Column("raised_at", Ts, nullable=False),
    Column("cleared_at", Ts),
    Column("value", JSON),
)

callbacks = Table(
    "callbacks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("proposal_id", String(40), ForeignKey("proposals.id"), nullable=False),
    Column("change_id", String(40), ForeignKey("changes.id"), nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", Ts, nullable=False),
    Column("next_attempt_at", Ts, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("delivered_at", Ts),
    Column("gave_up_at", Ts),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("lease_owner", String(64)),
    Column("lease_expires", Ts),
    Column("outcome", String(20), nullable=False),
    # One callback per outcome of a change: a retried transition never sends two.
    UniqueConstraint("change_id", "outcome"),
    Index("ix_callbacks_due", "delivered_at", "next_attempt_at"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("created_at", Ts, nullable=False),
    Column("kind", String(50), nullable=False),
    Column("text", Text, nullable=False),
    Column("blocks", JSON),
    Column("sent_at", Ts),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("lease_owner", String(64)),
    Column("lease_expires", Ts),
    Index("ix_alerts_unsent", "sent_at", "created_at"),
)
