"""A small built dataset for training tests: ingested, selected and sharded for real."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from oceanml.simulator import simulate, write_landing
from oceanml.store import filesystem
from tasks.dataset import select_manifest, write_manifest
from tasks.ingest import ingest
from tasks.shards import DatasetParams, build

END = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def dataset(settings, sessions, tmp_path) -> Path:
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=4, per_day=40, end=END, annotated_fraction=0.9),
                  faults=False)
    ingest(settings, sessions, now=END)
    write_manifest(select_manifest(sessions, "plastic-detector").frame, tmp_path / "m.csv")
    build(tmp_path / "m.csv", tmp_path / "ds", DatasetParams("plastic-detector", 32), settings)
    return tmp_path / "ds"
