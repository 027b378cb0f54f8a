"""Alembic environment: always run on the connection the platform hands over
(see services.db.engine), never from an ini file. The revisions live in each
domain's folder (services/<domain>/migrations/, one branch per domain)."""

from alembic import context

from services.db.metadata import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
