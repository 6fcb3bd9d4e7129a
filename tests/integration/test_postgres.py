"""The same schema, ingestion and enrichment on a real PostgreSQL."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from oceanml.db import Observation, Reject, session_factory
from oceanml.llm import HeuristicProvider
from oceanml.simulator import simulate, write_landing
from oceanml.store import filesystem
from tasks.enrich import enrich
from tasks.ingest import ingest

pytestmark = pytest.mark.integration
END = datetime(2026, 11, 20, tzinfo=UTC)


def test_ingest_and_enrich_on_postgres_are_idempotent(settings, pg_url) -> None:
    settings.db_url = pg_url
    sessions = session_factory(pg_url)
    settings.ingest_chunk_size = 25
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=4, per_day=20, end=END), faults=True)
    first = ingest(settings, sessions, now=END)
    assert (first.ingested, first.rejected) == (80, 6)
    assert enrich(sessions, HeuristicProvider()).enriched == 80
    again = ingest(settings, sessions, now=END)
    assert (again.ingested, again.rejected, again.already_known) == (0, 0, 86)
    assert enrich(sessions, HeuristicProvider()).requests == 0
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Observation)) == 80
        assert s.scalar(select(func.count()).select_from(Reject)) == 6
        row = s.scalar(select(Observation).order_by(Observation.id).limit(1))
    assert row.observed_at.tzinfo is not None and row.llm_tags
    assert row.image_stats["brightness"] > 0
