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


def share_the_cores() -> None:
    """Each pytest-xdist worker's share of the cores as its torch/OpenMP threads, inherited by
    the processes it starts (a nightly's branches, servers): by default each process takes every
    core, and two workers each training on two cores with a nightly's two branches spent half
    their time switching threads (a nightly of two workers beside each other: 286 s with every
    process at two threads, 151 s at one; alone, 86 s and 84 s). Set before torch loads, since
    OpenMP reads it once; an OMP_NUM_THREADS the caller set wins. Only in a worker: xdist's
    controller loads this file too, and what it set the workers would inherit as the
    caller's."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)


share_the_cores()

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


STACK_FILE = "tests/integration/test_production_stack.py"


def share_scope(nodeid: str) -> str:
    """The unit one pytest-xdist worker runs whole: a file, so its module fixtures (a trained
    model, a nightly) are built once. The production stack's tests restart the stack's own
    PostgreSQL (``.ci/run`` gives it one), so the other PostgreSQL tests run beside them."""
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the longest units first, so no worker is left with a long one at the end: the
    production stack's lifecycle, then the files that train or run whole flows (``slow``),
    then the rest; each unit's tests stay together and in their order."""
    first: dict[str, int] = {}
    rank: dict[str, int] = {}
    for index, item in enumerate(items):
        scope = share_scope(item.nodeid)
        first.setdefault(scope, index)
        slow = 1 if item.get_closest_marker("slow") else 2
        rank[scope] = 0 if scope == STACK_FILE else min(rank.get(scope, 2), slow)
    items.sort(key=lambda i: (rank[share_scope(i.nodeid)], first[share_scope(i.nodeid)]))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``make test``'s workers (``-n auto``) take whole :func:`share_scope` units, in the
    order collected."""
    from xdist.scheduler import LoadScopeScheduling

    class ByShareScope(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return share_scope(nodeid)

    config.option.loadscopereorder = False  # keep the longest-first order above
    return ByShareScope(config, log)


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
