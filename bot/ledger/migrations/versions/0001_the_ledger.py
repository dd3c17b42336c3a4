"""the ledger

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_agents_key_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_agents_name")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("blocks", sa.JSON(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("ix_alerts_unsent", "alerts", ["sent_at", "created_at"], unique=False)
    op.create_table(
        "audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("proposal_id", sa.String(length=40), nullable=True),
        sa.Column("change_id", sa.String(length=40), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("hash", name=op.f("uq_audit_events_hash")),
    )
    op.create_index("ix_audit_proposal", "audit_events", ["proposal_id"], unique=False)
    op.create_table(
        "crm_budget",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("used_today", sa.Integer(), nullable=False),
        sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_crm_budget")),
    )
    op.create_table(
        "drift_alarms",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_drift_alarms")),
    )
    op.create_table(
        "rollbacks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("include_conflicts", sa.Boolean(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('previewed', 'confirmed', 'done', 'cancelled')",
            name=op.f("ck_rollbacks_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollbacks")),
    )
    op.create_index("ix_rollbacks_state", "rollbacks", ["state"], unique=False)
    op.create_table(
        "proposals",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("crm", sa.String(length=20), nullable=False),
        sa.Column("object_type", sa.String(length=100), nullable=False),
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("review_state", sa.String(length=20), nullable=False),
        sa.Column("reviewer_id", sa.String(length=40), nullable=True),
        sa.Column("reviewer_email", sa.String(length=320), nullable=True),
        sa.Column("route_note", sa.Text(), nullable=True),
        sa.Column("review_channel", sa.String(length=40), nullable=True),
        sa.Column("review_ts", sa.String(length=40), nullable=True),
        sa.Column("record_name", sa.Text(), nullable=True),
        sa.Column("record_url", sa.Text(), nullable=True),
        sa.Column("review_fields", sa.JSON(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("remind_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reminded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision", sa.String(length=20), nullable=True),
        sa.Column("decided_by", sa.String(length=40), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reject_reason", sa.Text(), nullable=True),
        sa.Column("message_version", sa.Integer(), nullable=False),
        sa.Column("message_synced", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "decision IS NULL OR decision IN ('approved', 'edited', 'rejected', 'expired')",
            name=op.f("ck_proposals_decision"),
        ),
        sa.CheckConstraint(
            "review_state IN ('none', 'unrouted', 'pending', 'unroutable', 'decided', 'expired', 'closed')",
            name=op.f("ck_proposals_review_state"),
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_proposals_agent_id_agents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_proposals")),
    )
    op.create_index(
        "ix_proposals_agent_created", "proposals", ["agent_id", "created_at"], unique=False
    )
    op.create_index(
        "ix_proposals_review", "proposals", ["review_state", "expires_at"], unique=False
    )
    op.create_index(
        "ix_proposals_reviewer", "proposals", ["reviewer_id", "review_state"], unique=False
    )
    op.create_index("ix_proposals_run", "proposals", ["run_id"], unique=False)
    op.create_table(
        "changes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("proposal_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("field", sa.String(length=100), nullable=False),
        sa.Column("tier", sa.String(length=20), nullable=False),
        sa.Column("mode", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("proposed", sa.JSON(), nullable=True),
        sa.Column("has_observed", sa.Boolean(), nullable=False),
        sa.Column("observed", sa.JSON(), nullable=True),
        sa.Column("has_shown", sa.Boolean(), nullable=False),
        sa.Column("shown", sa.JSON(), nullable=True),
        sa.Column("approved", sa.JSON(), nullable=True),
        sa.Column("before_captured", sa.Boolean(), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("written", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("activity_id", sa.String(length=64), nullable=True),
        sa.Column("reverts_change_id", sa.String(length=40), nullable=True),
        sa.Column("rollback_id", sa.String(length=40), nullable=True),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('field', 'activity', 'compensation')", name=op.f("ck_changes_kind")
        ),
        sa.CheckConstraint("mode IN ('live', 'shadow')", name=op.f("ck_changes_mode")),
        sa.CheckConstraint(
            "status <> 'committed' OR before_captured", name=op.f("ck_changes_committed_has_before")
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'committing', 'committed', 'conflict', 'failed', 'pending_review', 'rejected', 'expired', 'blocked', 'refused', 'shadowed')",
            name=op.f("ck_changes_status"),
        ),
        sa.CheckConstraint(
            "tier IN ('read_only', 'autonomous', 'reviewed', 'never_autonomous')",
            name=op.f("ck_changes_tier"),
        ),
        sa.ForeignKeyConstraint(
            ["proposal_id"], ["proposals.id"], name=op.f("fk_changes_proposal_id_proposals")
        ),
        sa.ForeignKeyConstraint(
            ["reverts_change_id"], ["changes.id"], name=op.f("fk_changes_reverts_change_id_changes")
        ),
        sa.ForeignKeyConstraint(
            ["rollback_id"], ["rollbacks.id"], name=op.f("fk_changes_rollback_id_rollbacks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_changes")),
        sa.UniqueConstraint("proposal_id", "seq", name=op.f("uq_changes_proposal_id_seq")),
    )
    op.create_index("ix_changes_reverts", "changes", ["reverts_change_id"], unique=False)
    op.create_index("ix_changes_rollback", "changes", ["rollback_id"], unique=False)
    op.create_index("ix_changes_status_lease", "changes", ["status", "lease_expires"], unique=False)
    op.create_table(
        "idempotency_keys",
        sa.Column("agent_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("proposal_id", sa.String(length=40), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_idempotency_keys_agent_id_agents")
        ),
        sa.ForeignKeyConstraint(
            ["proposal_id"],
            ["proposals.id"],
            name=op.f("fk_idempotency_keys_proposal_id_proposals"),
        ),
        sa.PrimaryKeyConstraint("agent_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "callbacks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("proposal_id", sa.String(length=40), nullable=False),
        sa.Column("change_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gave_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.ForeignKeyConstraint(
            ["change_id"], ["changes.id"], name=op.f("fk_callbacks_change_id_changes")
        ),
        sa.ForeignKeyConstraint(
            ["proposal_id"], ["proposals.id"], name=op.f("fk_callbacks_proposal_id_proposals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callbacks")),
        sa.UniqueConstraint("change_id", "outcome", name=op.f("uq_callbacks_change_id_outcome")),
    )
    op.create_index(
        "ix_callbacks_due", "callbacks", ["delivered_at", "next_attempt_at"], unique=False
    )
    op.create_table(
        "shadow_outcomes",
        sa.Column("change_id", sa.String(length=40), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("human_value", sa.JSON(), nullable=True),
        sa.Column("basis", sa.String(length=20), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('agreed', 'disagreed', 'unchanged')",
            name=op.f("ck_shadow_outcomes_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["change_id"], ["changes.id"], name=op.f("fk_shadow_outcomes_change_id_changes")
        ),
        sa.PrimaryKeyConstraint("change_id", name=op.f("pk_shadow_outcomes")),
    )


def downgrade() -> None:
    op.drop_table("shadow_outcomes")
    op.drop_index("ix_callbacks_due", table_name="callbacks")
    op.drop_table("callbacks")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_changes_status_lease", table_name="changes")
    op.drop_index("ix_changes_rollback", table_name="changes")
    op.drop_index("ix_changes_reverts", table_name="changes")
    op.drop_table("changes")
    op.drop_index("ix_proposals_run", table_name="proposals")
    op.drop_index("ix_proposals_reviewer", table_name="proposals")
    op.drop_index("ix_proposals_review", table_name="proposals")
    op.drop_index("ix_proposals_agent_created", table_name="proposals")
    op.drop_table("proposals")
    op.drop_index("ix_rollbacks_state", table_name="rollbacks")
    op.drop_table("rollbacks")
    op.drop_table("drift_alarms")
    op.drop_table("crm_budget")
    op.drop_index("ix_audit_proposal", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index("ix_alerts_unsent", table_name="alerts")
    op.drop_table("alerts")
    op.drop_table("agents")
