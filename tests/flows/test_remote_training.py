"""With a training work pool configured, retrain trains through the train deployment, run by
a real Prefect worker in its own process, and goes on with what that run recorded."""

from __future__ import annotations

import os
import signal
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
from tests.flows.test_deployments import REPO, deploy_on_pool

pytestmark = pytest.mark.slow
POOL = "oceanml-gpu-test"


@pytest.fixture
def worker_env(prefect_harness, settings, monkeypatch) -> dict[str, str]:
    """Landed data, a project, the deployment on its pool, and OCEANML_TRAIN_WORK_POOL set."""
    make_project(settings.project_dir, {"promote": {"floor": 0.0}})
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=4, per_day=30, end=end, annotated_fraction=0.9),
                  faults=False)
    from core.database import session_factory

    ingest(settings, session_factory(settings.db_url), now=end + timedelta(hours=1))
    env = deploy_on_pool("train-gpu", POOL)
    monkeypatch.setenv("OCEANML_TRAIN_WORK_POOL", POOL)
    return env


def test_retrain_trains_through_the_train_deployment_on_the_work_pool(worker_env, settings):
    from core.settings import get_settings
    from flows.retrain import retrain

    get_settings.cache_clear()
    worker = subprocess.Popen(
        [str(REPO / ".venv/bin/prefect"), "worker", "start", "--pool", POOL, "--limit", "1"],
        cwd=REPO, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        result = retrain(model="plastic-detector", reason="test", cooldown_hours=0,
                         max_epochs=1, backbone="resnet18")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        log = worker.communicate(timeout=60)[0]
    assert result.train.model_version == "1", log[-3000:]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("train/train-gpu")
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment.id])))
    assert len(runs) == 1 and runs[0].state.is_completed()
    assert runs[0].parameters["dataset_version"] == result.dataset.version
    assert runs[0].parent_task_run_id is not None  # shown as a subflow of the retrain run
    from core.database import session_factory

    with session_factory(settings.db_url)() as session:
        row = session.scalar(select(TrainingRun))
    assert row.flow_run_id == str(runs[0].id)  # trained in the worker's run, not in-process
    assert not result.train.reused
    assert result.evaluate.model_version == "1"


def test_a_missing_train_deployment_is_refused_by_name(prefect_harness, settings, monkeypatch):
    from flows.training import check_deployment

    with pytest.raises(LookupError, match="no deployment 'train/nowhere'"):
        check_deployment("train/nowhere", "oceanml-gpu")
