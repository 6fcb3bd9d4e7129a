"""Alembic's environment: migrations run on the connection :func:`core.schema.migrate` hands
over (no alembic.ini, no URL of its own), against OceanML's metadata. ``render_as_batch`` lets
SQLite alter tables (it copies them), PostgreSQL alters in place."""

from alembic import context

from core.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
