"""Alembic migrations of the metadata schema: ``core.db.migrate`` runs them."""
