"""Alembic environment: migrations run on the connection execbox hands over
(``Database.migrate``), inside its transaction and lock."""

from alembic import context

from execbox.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `execbox db upgrade`, which supplies the connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
