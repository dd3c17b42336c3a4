"""indexes for a ledger that has grown: the committer's claim order, unsynced review messages

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNSYNCED = "message_version > message_synced"


def upgrade() -> None:
    op.create_index("ix_changes_queue", "changes", ["status", "created_at", "seq"], unique=False)
    op.create_index(
        "ix_proposals_unsynced",
        "proposals",
        ["id"],
        unique=False,
        sqlite_where=sa.text(UNSYNCED),
        postgresql_where=sa.text(UNSYNCED),
    )


def downgrade() -> None:
    op.drop_index("ix_proposals_unsynced", table_name="proposals")
    op.drop_index("ix_changes_queue", table_name="changes")
