"""Landing and lake on S3, served by moto's S3 server on loopback."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import select

from core.db import Observation
from core.store import filesystem
from oceanml.simulator import simulate, write_landing
from tasks.ingest import ingest

pytestmark = pytest.mark.integration
END = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    httpx.post(f"{url}/moto-api/reset").raise_for_status()  # moto's state is per process
    yield url
    server.stop()


def test_ingest_from_an_s3_landing_into_an_s3_lake(settings, sessions, s3) -> None:
    settings.s3_endpoint_url = s3
    settings.landing_url = "s3://ocean/landing"
    settings.lake_url = "s3://ocean/lake"
    landing = filesystem(settings.landing_url, settings)
    landing.fs.mkdir("ocean")
    write_landing(landing, simulate(days=1, devices=2, per_day=5, end=END), faults=True)
    first = ingest(settings, sessions, now=END)
    assert (first.ingested, first.rejected) == (10, 6)
    lake = filesystem(settings.lake_url, settings)
    with sessions() as s:
        keys = [o.image_key for o in s.scalars(select(Observation))]
    assert len(keys) == 10 and all(lake.fs.exists(lake.path(k)) for k in keys)
    again = ingest(settings, sessions, now=END)
    assert (again.seen, again.already_known) == (0, 16)  # ETags in the ledger
    write_landing(landing, simulate(days=1, devices=2, per_day=5, end=END, seed=3), faults=False)
    assert ingest(settings, sessions, now=END).ingested == 10


def test_a_dataset_version_pushed_to_an_s3_remote_is_restored_on_a_clean_checkout(
        settings, sessions, s3, tmp_path) -> None:
    """Landing, lake and DVC remote on S3: the dataset stage builds from the S3 lake and pushes
    to the S3 remote; a fresh clone of the project, with no DVC cache, restores the same bytes."""
    import subprocess

    from tasks.dataset import build_dataset, dataset_dir, local_dataset
    from tests.conftest import file_digests, make_project

    settings.s3_endpoint_url = s3
    settings.landing_url, settings.lake_url = "s3://ocean/landing", "s3://ocean/lake"
    settings.dvc_remote_url = "s3://ocean/dvc"
    landing = filesystem(settings.landing_url, settings)
    landing.fs.mkdir("ocean")
    write_landing(landing, simulate(days=1, devices=4, per_day=20, end=END,
                                    annotated_fraction=1.0), faults=False)
    ingest(settings, sessions, now=END)
    make_project(settings.project_dir)
    built = build_dataset(settings, sessions, "plastic-detector", profile="cpu-small")
    remote = filesystem(settings.dvc_remote_url, settings)
    assert remote.fs.find(remote.root)  # the version's objects are on S3

    original = file_digests(dataset_dir(settings, "plastic-detector"))
    clone = tmp_path / "clean-checkout"
    subprocess.run(["git", "clone", "-q", str(settings.project_dir), str(clone)], check=True)
    assert not (clone / ".dvc" / "cache").exists()
    elsewhere = settings.model_copy(update={"project_dir": clone})
    restored = local_dataset(elsewhere, "plastic-detector", built.version)
    assert restored.is_relative_to(clone) and file_digests(restored) == original
