"""Alembic migrations of the metadata schema: ``oceanml.db.migrate`` runs them."""
