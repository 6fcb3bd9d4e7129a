"""The same schema, ingestion and enrichment on a real PostgreSQL."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from core.database import session_factory
from core.db import Observation, Reject
from core.llm import HeuristicProvider
from core.store import filesystem
from oceanml.simulator import simulate, write_landing
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
    landing = filesystem(settings.landing_url)
    landing.fs.makedirs(landing.path("tables"), exist_ok=True)
    landing.fs.pipe_file(landing.path("tables/readings.csv"), (
        b"device_id,device_type,observed_at,lat,lon,ph,wind_knots\n"
        b"buoy-9,buoy,2026-11-19T10:00:00Z,43.5,-3.2,8.1,12\n"
        b"buoy-9,buoy,2026-11-19T11:00:00Z,43.5,-3.2,nan,12\n"))
    first = ingest(settings, sessions, now=END)  # COPY on PostgreSQL
    assert (first.ingested, first.rejected) == (81, 7)
    assert enrich(sessions, HeuristicProvider()).enriched == 81
    again = ingest(settings, sessions, now=END)
    assert (again.ingested, again.rejected, again.already_known) == (0, 0, 87)
    assert enrich(sessions, HeuristicProvider()).requests == 0
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Observation)) == 81
        assert s.scalar(select(func.count()).select_from(Reject)) == 7
        row = s.scalar(select(Observation).where(Observation.image_key.is_not(None)).limit(1))
        sensor = s.scalar(select(Observation).where(Observation.device_id == "buoy-9"))
    assert row.observed_at.tzinfo is not None and row.llm_tags
    assert row.image_stats["brightness"] > 0 and row.labels is not None
    assert sensor.image_key is None and sensor.extra_readings == {"wind_knots": 12.0}
    assert sensor.ph == 8.1 and sensor.created_at is not None


def test_scoring_on_postgres_writes_each_prediction_once(settings, pg_url) -> None:
    """ON CONFLICT DO NOTHING ... RETURNING on PostgreSQL: a re-run and a racing run over the
    same rows write nothing twice, and count what they found already written."""
    from core.db import Prediction
    from core.registry import client, set_champion
    from models.predictor import load_predictor
    from tasks.score import pending, score_model, score_rows
    from tests.registered import SPEC, conv_net, register

    settings.db_url = pg_url
    sessions = session_factory(pg_url)
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=3, per_day=10, end=END), faults=False)
    ingest(settings, sessions, now=END)
    with sessions() as s:
        with_image = s.scalar(select(func.count()).where(Observation.image_key.is_not(None)))
    mlc = client(settings)
    set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(1), "v1"))

    first = score_model(sessions, mlc, settings, SPEC.name)
    assert (first.scored, first.failed) == (with_image, {})
    assert score_model(sessions, mlc, settings, SPEC.name).reason == "nothing left to score"
    everything = pending(sessions, SPEC.name, "not-a-version")  # every observation with an image
    racing = score_rows(sessions, load_predictor(mlc, SPEC.name, "1", device="cpu"), everything,
                        filesystem(settings.lake_url), batch_size=7, workers=0, flow_run_id="b")
    assert (racing.scored, racing.already) == (0, with_image)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == with_image
        row = s.scalar(select(Prediction).limit(1))
    assert row.scored_at.tzinfo is not None and set(row.probabilities) == set(SPEC.outputs)


def test_lookups_of_more_keys_than_a_slice_on_postgres(pg_url) -> None:
    """An array parameter per slice of keys (``= ANY``), each key found once, none invented."""
    from tasks.ingest import SLICE, lookup

    sessions = session_factory(pg_url)
    keys = [f"{i:064x}" for i in range(2 * SLICE + 7)]
    stored = {keys[0]: "first", keys[SLICE]: "second slice", keys[-1]: "last"}
    with sessions() as s:
        s.execute(Observation.__table__.insert(), [
            {"content_hash": h, "source_key": k, "device_id": "d", "device_type": "t",
             "observed_at": END, "lat": 0.0, "lon": 0.0} for h, k in stored.items()])
        assert lookup(s, Observation.content_hash, Observation.source_key, keys) == stored
        assert lookup(s, Observation.content_hash, Observation.source_key, keys[1:SLICE]) == {}
        assert lookup(s, Observation.content_hash, Observation.source_key, []) == {}
