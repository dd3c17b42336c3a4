"""Alembic environment: migrations run on the connection `bot.ledger.db.upgrade` hands over."""

from alembic import context

import bot.ledger.budget  # noqa: F401  (registers crm_budget on the same metadata)
from bot.ledger.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `python -m bot db upgrade`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
