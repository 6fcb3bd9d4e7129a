"""The metadata database's schema version: Alembic migrations (``core/migrations``).

Every process that opens the database brings it to the head revision first
(:func:`migrate`): a new database gets every table; one made before migrations existed (its
tables there, no ``alembic_version``) is stamped at the baseline it was, then upgraded. A
database already at head costs one query. Migrating takes a lock (PostgreSQL advisory lock,
a file lock beside a SQLite file), so processes starting together migrate once.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"  # the schema ``create_all`` made before migrations existed
LEGACY_TABLE = "observations"  # present in every database OceanML ever made
LOCK_KEY = zlib.crc32(b"oceanml-schema")  # the PostgreSQL advisory lock's key


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code: the script location and the connection to use."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this version of OceanML knows."""
    return ScriptDirectory.from_config(config()).get_current_head()


def current(connection: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine, target: str = "head") -> str:
    """Upgrade the database to ``target`` (default: head); the revision it ends at."""
    want = head() if target == "head" else target
    with engine.connect() as connection:
        if current(connection) == want:
            return want
    with schema_lock(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        cfg = config(connection)
        at = current(connection)
        if at is None and inspect(connection).has_table(LEGACY_TABLE):
            command.stamp(cfg, BASELINE)
        if current(connection) != want:
            command.upgrade(cfg, target)
        return current(connection)


@contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """A file lock beside a SQLite database file; PostgreSQL locks inside the transaction."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    from filelock import FileLock

    with FileLock(f"{Path(database).resolve()}.migrate.lock", timeout=300):
        yield
