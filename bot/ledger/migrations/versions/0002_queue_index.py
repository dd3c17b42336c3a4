"""an index in the committer's claim order

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_changes_queue", "changes", ["status", "created_at", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_changes_queue", table_name="changes")
