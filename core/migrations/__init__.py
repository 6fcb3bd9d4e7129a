"""Alembic migrations of the metadata schema: ``core.schema.migrate`` runs them."""
