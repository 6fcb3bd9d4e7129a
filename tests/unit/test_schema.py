"""Schema changes are Alembic migrations: a new database and one made before migrations both
end at head, holding exactly what the models declare, with their rows kept; processes
starting together migrate once. SQLite here, PostgreSQL too when the suite has one."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from core.database import make_engine
from core.db import Base
from core.schema import BASELINE, current, head, migrate

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'oceanml.db'}"
    return request.getfixturevalue("pg_url")


def differences(engine) -> list:
    """What the database's schema lacks or has beyond the models (empty: they agree)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_an_empty_database_migrates_to_exactly_the_models_schema(url) -> None:
    engine = make_engine(url)
    assert migrate(engine) == head()
    assert differences(engine) == []
    with engine.connect() as connection:
        assert current(connection) == head()
    assert migrate(engine) == head()  # at head: nothing to do


def test_a_database_made_before_migrations_is_stamped_then_upgraded_keeping_its_rows(url):
    engine = make_engine(url)
    migrate(engine, BASELINE)
    with engine.begin() as connection:  # as create_all left it: the tables, no version
        connection.execute(text("DROP TABLE alembic_version"))
        for drifted in (True, False):
            connection.execute(text(
                "INSERT INTO drift_reports (model_name, reference_dataset_version, n_current,"
                " drifted, features, created_at) VALUES ('plastic-detector', 'ds-1', 120, :d,"
                " '{}', :t)"), {"d": drifted, "t": datetime(2026, 11, 20, tzinfo=UTC)})
    assert not inspect(engine).has_table("training_jobs")
    assert migrate(engine) == head()
    assert differences(engine) == []
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT drifted, verdict FROM drift_reports ORDER BY id")).all()
    assert [(bool(d), v) for d, v in rows] == [(True, "drift"), (False, "none")]


def _open(url: str) -> str:
    from core.database import session_factory

    session_factory(url)
    with make_engine(url).connect() as connection:
        return current(connection)


def test_processes_opening_a_new_database_together_migrate_it_once(url) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        revisions = pool.map(_open, [url] * 4)
    assert revisions == [head()] * 4
    assert differences(make_engine(url)) == []
