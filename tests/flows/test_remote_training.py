"""With a training work pool configured, retrain trains through the train deployment, run by
a real Prefect worker in its own process, and goes on with what that run recorded."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from sqlalchemy import select

from core.records import TrainingRun
from core.store import filesystem
from oceanml.simulator import simulate, write_landing
from tasks.ingest import ingest
from tests.conftest import make_project
from tests.deployed import kill_tree, stop_worker
from tests.flows.test_deployments import REPO, deploy_on_pool

pytestmark = pytest.mark.slow
POOL = "oceanml-gpu-test"


@pytest.fixture
def worker_env(prefect_harness, settings, monkeypatch) -> dict[str, str]:
    return landed_on_pool(settings, monkeypatch, POOL)


def landed_on_pool(settings, monkeypatch, pool: str) -> dict[str, str]:
    """Landed data, a project, the deployment on ``pool``, and OCEANML_TRAIN_WORK_POOL set."""
    make_project(settings.project_dir, {"promote": {"floor": 0.0}})
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=4, per_day=30, end=end, annotated_fraction=0.9),
                  faults=False)
    from core.database import session_factory

    ingest(settings, session_factory(settings.db_url), now=end + timedelta(hours=1))
    env = deploy_on_pool("train-gpu", pool)
    monkeypatch.setenv("OCEANML_TRAIN_WORK_POOL", pool)
    return env


def test_retrain_trains_through_the_train_deployment_on_the_work_pool(worker_env, settings):
    from core.settings import get_settings
    from flows.retrain import retrain

    get_settings.cache_clear()
    earlier = before()
    worker = subprocess.Popen(
        [str(REPO / ".venv/bin/prefect"), "worker", "start", "--pool", POOL, "--limit", "1"],
        cwd=REPO, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        result = retrain(model="plastic-detector", reason="test", cooldown_hours=0,
                         max_epochs=1, backbone="resnet18")
    finally:
        log = stop_worker(worker)
    assert result.train.model_version == "1", log[-3000:]
    runs = train_runs(but=earlier)  # the harness's server outlives a test
    assert len(runs) == 1 and runs[0].state.is_completed()
    assert runs[0].parameters["dataset_version"] == result.dataset.version
    assert runs[0].parent_task_run_id is not None  # shown as a subflow of the retrain run
    from core.database import session_factory

    with session_factory(settings.db_url)() as session:
        row = session.scalar(select(TrainingRun))
    assert row.flow_run_id == str(runs[0].id)  # trained in the worker's run, not in-process
    assert not result.train.reused
    assert result.evaluate.model_version == "1"


def train_runs(but: frozenset = frozenset()) -> list:
    """The train deployment's runs, less those in ``but`` (the harness outlives a test)."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("train/train-gpu")
        return [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment.id]))) if r.id not in but]


def before() -> frozenset:
    return frozenset(r.id for r in train_runs())


def test_a_training_no_worker_starts_is_cancelled_and_fails_by_name(prefect_harness, settings,
                                                                    monkeypatch):
    from core.jobs import list_jobs
    from core.settings import get_settings
    from flows.retrain import retrain

    empty = "oceanml-gpu-empty"  # a pool no worker of another test ever polled
    landed_on_pool(settings, monkeypatch, empty)
    monkeypatch.setenv("OCEANML_TRAIN_START_TIMEOUT_S", "5")
    get_settings.cache_clear()
    earlier = before()
    state = retrain(model="plastic-detector", reason="test", cooldown_hours=0, max_epochs=1,
                    backbone="resnet18", return_state=True)  # and no worker on the pool
    (run,) = train_runs(but=earlier)
    reason = (f"train deployment run {run.name} was not started: pool {empty} had no online "
              "worker for 5 s (OCEANML_TRAIN_START_TIMEOUT_S); it was cancelled")
    assert state.is_failed() and state.message.endswith(f"TrainingLost: {reason}")
    assert run.state.is_cancelled() and run.state.message == reason
    from core.database import session_factory

    (job,) = list_jobs(session_factory(settings.db_url), "plastic-detector")
    assert (job.status, job.error) == ("failed", reason)


def test_a_training_whose_worker_dies_is_cancelled_within_the_heartbeat_bound(
        worker_env, settings, monkeypatch):
    """The worker and the run it started are killed mid-training (kill -9, as a lost
    machine): the retrain fails naming the silence within its bound, not never."""
    import threading
    import time

    from core.database import session_factory
    from core.jobs import list_jobs
    from core.settings import get_settings
    from flows import training
    from flows.retrain import retrain

    monkeypatch.setenv("OCEANML_TRAIN_HEARTBEAT_TIMEOUT_S", "20")
    monkeypatch.setattr(training, "CANCEL_GRACE_S", 3.0)
    get_settings.cache_clear()
    worker_env = {**worker_env, "OCEANML_TRAIN_HEARTBEAT_S": "2"}
    worker = subprocess.Popen(
        [str(REPO / ".venv/bin/prefect"), "worker", "start", "--pool", POOL, "--limit", "1"],
        cwd=REPO, env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    sessions = session_factory(settings.db_url)
    killed: list[float] = []

    def kill_when_training() -> None:
        while not killed:
            jobs = list_jobs(sessions, "plastic-detector")
            if jobs and jobs[0].status == "running":
                kill_tree(worker.pid)  # the run's process too
                killed.append(time.monotonic())
            time.sleep(0.5)

    killer = threading.Thread(target=kill_when_training, daemon=True)
    earlier = before()
    killer.start()
    try:
        state = retrain(model="plastic-detector", reason="test", cooldown_hours=0,
                        max_epochs=200, backbone="resnet18", return_state=True)
    finally:
        killed.append(0.0)
        kill_tree(worker.pid)  # a worker that outlived the test would serve the next one's pool
        worker.wait(timeout=60)
    assert killed[0] > 0, "the training never ran"
    assert time.monotonic() - killed[0] < 20 + 60  # the bound, the poll and the grace
    (run,) = train_runs(but=earlier)
    assert state.is_failed() and f"TrainingLost: train deployment run {run.name} sent no " \
        "heartbeat for" in state.message
    assert "its worker on pool oceanml-gpu-test was lost; it was cancelled" in state.message
    assert run.state.is_cancelled()
    (job,) = list_jobs(sessions, "plastic-detector")
    assert job.status == "failed" and "sent no heartbeat" in job.error


def test_a_missing_train_deployment_is_refused_by_name(prefect_harness, settings, monkeypatch):
    from flows.training import check_deployment

    with pytest.raises(LookupError, match="no deployment 'train/nowhere'"):
        check_deployment("train/nowhere", "oceanml-gpu")
