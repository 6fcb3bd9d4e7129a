"""With a score work pool configured, the score flow fans observation days out as runs of the
score deployment, and two real process workers on that pool score them at the same time."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from sqlalchemy import func, select

from core.db import Observation, Prediction
from core.registry import client, set_champion
from core.store import filesystem
from oceanml.simulator import simulate, write_landing
from tasks.ingest import ingest
from tests.deployed import stop_worker
from tests.flows.test_deployments import REPO, deploy_on_pool
from tests.registered import SPEC, conv_net, register

pytestmark = pytest.mark.slow
POOL = "oceanml-score-test"
END = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def pool_env(prefect_harness, settings, sessions, monkeypatch) -> dict[str, str]:
    """Three days of observations, a champion, the score deployment on its own pool."""
    write_landing(filesystem(settings.landing_url),
                  simulate(days=3, devices=3, per_day=10, end=END, annotated_fraction=0.5),
                  faults=False)
    ingest(settings, sessions, now=END + timedelta(days=1))
    mlc = client(settings)
    set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(1), "v1"))
    env = deploy_on_pool("score", POOL)
    quiet_the_schedule("score/score")
    monkeypatch.setenv("OCEANML_SCORE_WORK_POOL", POOL)
    return env


def quiet_the_schedule(name: str) -> None:
    """Pause the hourly schedule and drop the runs it already made: only the fan-out's runs
    may reach this pool's workers (the harness is shared with the other flow tests)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as prefect_client:
        deployment = prefect_client.read_deployment_by_name(name)
        for schedule in deployment.schedules:
            prefect_client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        scheduled = prefect_client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
        for run in scheduled:
            prefect_client.delete_flow_run(run.id)


def start_worker(env: dict[str, str], name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(REPO / ".venv/bin/prefect"), "worker", "start", "--pool", POOL, "--limit", "1",
         "--name", name], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_two_workers_score_the_days_at_once(pool_env, settings, sessions) -> None:
    from core.settings import get_settings
    from flows.score import score

    get_settings.cache_clear()
    workers = [start_worker(pool_env, f"scorer-{n}") for n in (1, 2)]
    try:
        result = score(model=SPEC.name)
    finally:
        logs = []
        for worker in workers:
            logs.append(stop_worker(worker))
    outcome = result[SPEC.name]
    assert outcome.version == "1" and len(outcome.days) == 3, logs[0][-2000:]
    with sessions() as s:
        observations = s.scalar(select(func.count()).where(Observation.image_key.is_not(None)))
        by_run = dict(s.execute(select(Prediction.flow_run_id, func.count())
                                .group_by(Prediction.flow_run_id)).all())
    assert outcome.scored == observations == sum(by_run.values())
    with get_client(sync_client=True) as prefect_client:
        deployment = prefect_client.read_deployment_by_name("score/score")
        runs = [r for r in prefect_client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment.id]))) if r.parameters.get("day")]
    assert len(runs) == 3 and all(r.state.is_completed() for r in runs)
    assert set(by_run) == {str(r.id) for r in runs}  # each day scored in its own run
    assert sorted(r.parameters["day"] for r in runs) == sorted(outcome.days)
    assert all(r.parameters["version"] == "1" for r in runs)
    assert all(r.parent_task_run_id is not None for r in runs)  # subflows in the UI
    # both workers took runs, and two runs were in flight at the same time
    assert all(any(str(r.id) in log for r in runs) for log in logs), [lg[-1500:] for lg in logs]
    spans = sorted((r.start_time, r.end_time) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
