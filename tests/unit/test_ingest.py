"""Ingestion against real files and a real SQLite DB."""

import gc
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from core.database import session_factory
from core.db import Observation, Reject
from core.store import filesystem
from oceanml.simulator import observation_keys, simulate, write_landing
from tasks.ingest import ingest, lookup

REPO = Path(__file__).resolve().parents[2]
END = datetime(2026, 11, 20, tzinfo=UTC)
FAULT_REASONS = {"image_truncated": 1, "sidecar_not_json": 1, "schema": 1, "missing_sidecar": 1,
                 "duplicate": 1, "out_of_range": 1}


def land(settings, **kwargs) -> list:
    obs = list(simulate(days=1, devices=3, per_day=10, end=END, **kwargs))
    write_landing(filesystem(settings.landing_url), iter(obs), faults=kwargs.get("seed", 0) == 0)
    return obs


def counts(sessions) -> tuple[int, dict[str, int]]:
    with sessions() as s:
        n = s.scalar(select(func.count()).select_from(Observation))
        reasons = dict(s.execute(select(Reject.reason, func.count()).group_by(Reject.reason)).all())
    return n, reasons


def test_bad_files_are_quarantined_and_the_rest_ingested(settings, sessions) -> None:
    settings.ingest_chunk_size = 7  # several chunks, and the duplicate in another chunk
    obs = land(settings)
    result = ingest(settings, sessions, now=END)
    assert result.ingested == len(obs) == 30
    assert dict(result.reasons) == FAULT_REASONS
    n, reasons = counts(sessions)
    assert n == 30 and reasons == FAULT_REASONS
    lake = filesystem(settings.lake_url)
    with sessions() as s:
        row = s.scalar(select(Observation).limit(1))
    assert lake.fs.exists(lake.path(row.image_key))
    assert row.image_key.startswith(f"images/{row.content_hash[:2]}/")
    assert row.image_stats["brightness"] > 0 and row.water_temp_c is not None


def test_a_second_run_reads_nothing_and_changes_nothing(settings, sessions) -> None:
    land(settings)
    ingest(settings, sessions, now=END)
    again = ingest(settings, sessions, now=END)
    assert (again.seen, again.ingested, again.rejected) == (0, 0, 0)
    assert again.already_known == 30 + 6
    assert counts(sessions) == (30, FAULT_REASONS)


def test_new_files_are_ingested_incrementally(settings, sessions) -> None:
    land(settings)
    ingest(settings, sessions, now=END)
    land(settings, seed=1)
    result = ingest(settings, sessions, now=END)
    assert (result.ingested, result.rejected) == (30, 0)
    assert counts(sessions)[0] == 60


def test_a_resent_copy_under_a_new_key_is_a_duplicate_and_stored_rows_stay(settings, sessions):
    obs = land(settings)
    ingest(settings, sessions, now=END)
    with sessions() as s:
        before = {o.content_hash: (o.source_key, o.water_temp_c) for o in s.scalars(select(Observation))}
    landing = filesystem(settings.landing_url)
    image_key, sidecar_key = observation_keys(obs[0])
    for key, new_key in ((image_key, "resent/a.jpg"), (sidecar_key, "resent/a.json")):
        landing.fs.makedirs(landing.path("resent"), exist_ok=True)
        landing.fs.pipe_file(landing.path(new_key), landing.fs.cat_file(landing.path(key)))
    result = ingest(settings, sessions, now=END)
    assert dict(result.reasons) == {"duplicate": 1}
    with sessions() as s:
        after = {o.content_hash: (o.source_key, o.water_temp_c) for o in s.scalars(select(Observation))}
    assert after == before


def test_a_corrupted_resend_of_a_known_key_is_rejected_without_touching_the_stored_row(
    settings, sessions
) -> None:
    obs = land(settings)
    ingest(settings, sessions, now=END)
    landing = filesystem(settings.landing_url)
    _, sidecar_key = observation_keys(obs[1])
    doc = json.loads(landing.fs.cat_file(landing.path(sidecar_key)))
    landing.fs.pipe_file(landing.path(sidecar_key), json.dumps({**doc, "lat": "north"}).encode())
    result = ingest(settings, sessions, now=END)
    assert dict(result.reasons) == {"schema": 1}
    with sessions() as s:
        stored = s.scalar(select(Observation).where(Observation.source_key == observation_keys(obs[1])[0]))
    assert stored is not None and stored.lat == doc["lat"]


def stored(sessions) -> tuple[list, list]:
    with sessions() as s:
        obs = s.execute(select(Observation.content_hash, Observation.source_key,
                               Observation.image_key, Observation.image_stats,
                               Observation.water_temp_c).order_by(Observation.source_key)).all()
        rejects = s.execute(select(Reject.source_key, Reject.reason)
                            .order_by(Reject.source_key, Reject.reason)).all()
    return [tuple(map(str, r)) for r in obs], [tuple(r) for r in rejects]


def test_worker_processes_store_exactly_what_one_process_stores(settings, sessions, tmp_path):
    land(settings)
    settings.ingest_workers = 1
    ingest(settings, sessions, now=END)
    pooled = settings.model_copy(update={
        "db_url": f"sqlite:///{tmp_path / 'pooled.db'}", "lake_url": (tmp_path / "lake2").as_uri(),
        "ingest_workers": 2, "ingest_chunk_size": 8})  # several chunks, each in the pool
    pooled_sessions = session_factory(pooled.db_url)
    collecting: list[bool] = []  # the cyclic collector, whenever a chunk has been stored
    result = ingest(pooled, pooled_sessions, now=END,
                    progress=lambda done, listed: collecting.append(gc.isenabled()))
    assert (result.ingested, dict(result.reasons)) == (30, FAULT_REASONS)
    assert stored(pooled_sessions) == stored(sessions)
    assert len(stored(sessions)[0]) == 30
    assert collecting and not any(collecting)  # paused while rows passed through
    assert gc.isenabled()  # and running again after


def test_the_collector_runs_again_after_a_failed_ingest_and_stays_off_if_it_was(
        settings, sessions) -> None:
    land(settings)
    settings.ingest_chunk_size = 7

    class Interrupted(BaseException):
        """As a KeyboardInterrupt would, without ending the test session if it escaped."""

    def interrupted(done: int, listed: int) -> None:  # raised inside the run, after a chunk
        raise Interrupted

    with pytest.raises(Interrupted):
        ingest(settings, sessions, now=END, progress=interrupted)
    assert gc.isenabled()
    gc.disable()
    try:
        ingest(settings, sessions, now=END)  # the rest of the interrupted run
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert counts(sessions) == (30, FAULT_REASONS)


def test_ingest_workers_import_neither_the_database_nor_prefect() -> None:
    """Every spawned worker imports tasks.preparer (and tasks.landing): SQLAlchemy or Prefect
    there would add their import time to each worker's start."""
    code = ("import sys, tasks.preparer; "
            "print(sorted({'sqlalchemy', 'prefect'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


LEFT_BEHIND = """
import gc, sys
from datetime import datetime
from core.database import session_factory
from core.settings import get_settings
from core.store import filesystem
from oceanml.simulator import simulate, write_landing
from tasks.ingest import ingest

end = datetime.fromisoformat(sys.argv[1])
settings = get_settings()
settings.ingest_chunk_size, settings.ingest_workers = 7, 1  # several chunks, in this process
write_landing(filesystem(settings.landing_url),
              iter(list(simulate(days=1, devices=3, per_day=10, end=end))), faults=True)
sessions = session_factory(settings.db_url)
gc.collect()
gc.disable()  # so that only the run's own sweeps collect
assert ingest(settings, sessions, now=end).ingested == 30
gc.set_debug(gc.DEBUG_SAVEALL)
gc.collect()
print(sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage}))
"""


def test_an_ingest_leaves_no_cycle_behind(tmp_path) -> None:
    """With the collector paused, a cycle left by a chunk (its session's, a rejection's
    traceback holding the frames that hold it) would live to the end of the run, however
    long. A process of its own, so that no other test's thread adds garbage of its own."""
    env = {**os.environ, "OCEANML_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", LEFT_BEHIND, END.isoformat()], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_labels_json_cannot_encode_fast_are_stored_exactly(settings, sessions) -> None:
    """orjson refuses integers beyond 64 bits; the column falls back to json, not an error."""
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=1, per_day=2, end=END), faults=False)
    sidecar = sorted(Path(settings.landing_url.removeprefix("file://")).rglob("*.json"))[0]
    doc = json.loads(sidecar.read_text())
    doc["labels"] = {"count": 2**70, "note": "ünïcode"}
    sidecar.write_text(json.dumps(doc))
    assert ingest(settings, sessions, now=END).ingested == 2
    with sessions() as s:
        labels = [o.labels for o in s.scalars(select(Observation))]
    assert {"count": 2**70, "note": "ünïcode"} in labels


def test_lookups_of_more_keys_than_sqlite_takes_parameters(sessions) -> None:
    keys = [f"{i:064x}" for i in range(2_000)]
    with sessions() as s:
        dbapi = s.connection().connection.driver_connection
        default = dbapi.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # older builds' limit
        s.execute(insert(Observation.__table__), [
            {"content_hash": keys[-1], "source_key": "k", "device_id": "d", "device_type": "t",
             "observed_at": END, "lat": 0.0, "lon": 0.0}])
        found = lookup(s, Observation.content_hash, Observation.source_key, keys)
        dbapi.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, default)
    assert found == {keys[-1]: "k"}


def test_every_landing_file_ends_as_an_observation_or_a_reject_with_its_reason(
        settings, sessions) -> None:
    """Two images of one stem beside one sidecar, and stray files: nothing disappears."""
    obs = list(simulate(days=1, devices=1, per_day=3, end=END))
    landing = filesystem(settings.landing_url)
    write_landing(landing, iter(obs), faults=False)
    image, sidecar = observation_keys(obs[0])
    stem = image.removesuffix(".jpg")
    landing.fs.pipe_file(landing.path(f"{stem}.png"), landing.fs.cat_file(landing.path(image)))
    landing.fs.pipe_file(landing.path(f"{stem}.txt"), b"operator notes")
    other = observation_keys(obs[1])[0].removesuffix(".jpg")
    landing.fs.pipe_file(landing.path(f"{other}.txt"), b"beside a good pair")
    landing.fs.makedirs(landing.path("loose"), exist_ok=True)
    landing.fs.pipe_file(landing.path("loose/readme.txt"), b"stray")

    result = ingest(settings, sessions, now=END)
    with sessions() as s:
        rejects = {(r.source_key, r.reason) for r in s.scalars(select(Reject))}
        accepted = set(s.scalars(select(Observation.source_key)))
    assert rejects == {(image, "ambiguous_pair"), (f"{stem}.png", "ambiguous_pair"),
                       (sidecar, "ambiguous_pair"), (f"{stem}.txt", "unsupported_file"),
                       (f"{other}.txt", "unsupported_file"),
                       ("loose/readme.txt", "unsupported_file")}
    assert accepted == {observation_keys(o)[0] for o in obs[1:]}  # the other pair still counts
    assert result.ingested == 2 and result.rejected == 6
    with sessions() as s:
        detail = s.scalar(select(Reject.detail).where(Reject.source_key == image))
    assert f"{stem}.png" in detail and "stem of its own" in detail
