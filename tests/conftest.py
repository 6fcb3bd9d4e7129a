"""Shared fixtures: a throw-away OceanML home and DVC project per test, real SQLite, real files,
and a small dataset ingested, selected and sharded for real."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from core.database import session_factory  # noqa: E402
from core.settings import Settings, get_settings  # noqa: E402
from core.store import filesystem  # noqa: E402
from oceanml.simulator import simulate, write_landing  # noqa: E402
from tasks.dataset import select_manifest, write_manifest  # noqa: E402
from tasks.ingest import ingest  # noqa: E402
from tasks.shards import DatasetParams, build  # noqa: E402
from tests.postgres import throwaway_database  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASET_END = datetime(2026, 11, 20, tzinfo=UTC)


SERVER_GROUP = "postgresql-server"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """How ``make test`` shares the tests among pytest-xdist workers (``--dist loadgroup``):
    a file's tests go to one worker, so its module fixtures (a trained model, a nightly) are
    built once; and every test of the PostgreSQL server (the ``integration`` and ``stack``
    markers, the ``pg_url`` fixture) runs on one worker, one after another, because the
    production-stack test restarts that server under a running nightly."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        shared = (item.get_closest_marker("integration") or item.get_closest_marker("stack")
                  or "pg_url" in getattr(item, "fixturenames", ()))
        group = SERVER_GROUP if shared else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))


def train_params(**values: object):
    """What a test trains with: the values it names, the rest from the shipped params.yaml's
    cpu-small profile (batch 32, lr 0.002, weight decay 0.0001, seed 7, patience 3)."""
    from tasks.train import TrainParams  # Lightning and MLflow: only for tests that train

    return TrainParams.load(REPO, "plastic-detector", "cpu-small", **values)


def make_project(root: Path, params_overrides: dict | None = None) -> Path:
    """A git repo holding the real dvc.yaml and params.yaml, as a user's clone would."""
    (root / ".dvc").mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        shutil.copy(REPO / name, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in (params_overrides or {}).items():
        if isinstance(values, dict) and isinstance(params.get(section), dict):
            params[section].update(values)
        else:
            params[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "."], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
    return root


def file_digests(root: Path) -> dict[str, str]:
    """SHA-256 of each file directly in ``root``, by name: a restored dataset version must
    equal the built one byte for byte."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.iterdir()) if p.is_file()}


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings pointing every store into ``tmp_path``, read the way production reads them."""
    monkeypatch.setenv("OCEANML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OCEANML_PROJECT_DIR", str(tmp_path / "project"))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def sessions(settings: Settings):
    return session_factory(settings.db_url)


@pytest.fixture
def dataset(settings, sessions, tmp_path) -> Path:
    """160 simulated observations of one day, ingested and built into 32 px shards of
    ``plastic-detector``: the dataset training and evaluation tests read."""
    return simulated_dataset(settings, sessions, "plastic-detector", tmp_path / "ds", size=32,
                             days=1, devices=4, per_day=40, end=DATASET_END)


def simulated_dataset(settings: Settings, sessions, model: str, out: Path, *, size: int,
                      days: int, devices: int, per_day: int, end: datetime,
                      annotated_fraction: float = 0.9) -> Path:
    """Simulated observations landed, ingested and built into ``model``'s shards at ``out``
    (``<out>.csv`` the manifest): a dataset version without DVC, for training tests."""
    write_landing(filesystem(settings.landing_url),
                  simulate(days=days, devices=devices, per_day=per_day, end=end,
                           annotated_fraction=annotated_fraction), faults=False)
    ingest(settings, sessions, now=end)
    manifest = out.with_suffix(".csv")
    write_manifest(select_manifest(sessions, model).frame, manifest)
    build(manifest, out, DatasetParams(label_key=model, image_size=size), settings)
    return out


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A database of the test's own on the server ``OCEANML_TEST_PG_URL`` names, dropped after."""
    url = os.environ.get("OCEANML_TEST_PG_URL")
    if not url:
        if os.environ.get("OCEANML_REQUIRE_PG"):
            pytest.fail("OCEANML_REQUIRE_PG is set but OCEANML_TEST_PG_URL is not")
        pytest.skip("set OCEANML_TEST_PG_URL (bash .ci/start-postgres.sh prints one)")
    with throwaway_database(url) as database_url:
        yield database_url
