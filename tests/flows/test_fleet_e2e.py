"""The drift loop end to end under a real Prefect server (the harness) with a real process
worker running prefect.yaml's deployments: three normal days, the nightly trains champions for
the fleet, then two storm days land, the monitor flow scores them and finds drift, and the
retrain deployment, started by the drift event without a hand in between, rebuilds the
dataset, trains and records a promotion decision for each drifted model."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from prefect.deployments import run_deployment
from sqlalchemy import select

from core.db import DecisionRecord, DriftRecord, TrainingJob, session_factory
from tests.conftest import make_project
from tests.deployed import land, unschedule, wait_for_final_runs
from tests.flows.test_deployments import REPO, deploy_on_pool

pytestmark = pytest.mark.slow
POOL = "oceanml-e2e"
FLEET = ["plastic-detector", "algae-bloom"]
RETRAIN_WAIT_S = 900


@pytest.fixture
def stack(prefect_harness, settings, monkeypatch):
    """A project whose fleet is two models, trained five epochs at the cpu-small profile; the
    nightly, monitor and retrain deployments on a pool of their own; one worker."""
    monkeypatch.setenv("OCEANML_PROFILE", "cpu-small")
    from oceanml.params import read_params

    profiles = read_params(REPO)["profiles"]
    profiles["cpu-small"]["train"]["max_epochs"] = 5  # enough to beat the trivial predictors
    make_project(settings.project_dir, {"promote": {"floor": 0.0}, "profiles": profiles,
                                        "fleet": FLEET})
    env = {}
    for name in ("nightly", "monitor", "retrain"):
        env = deploy_on_pool(name, POOL)
    unschedule("nightly/nightly", "monitor/monitor")  # the test says when they run
    worker = subprocess.Popen(
        [str(REPO / ".venv/bin/prefect"), "worker", "start", "--pool", POOL, "--limit", "1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        yield worker
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.communicate(timeout=60)


def run(name: str, worker) -> None:
    """Run deployment ``name`` on the worker and wait; fail with the worker's log if not done."""
    flow_run = run_deployment(name, timeout=900, poll_interval=2)
    if not flow_run.state.is_completed():
        os.killpg(worker.pid, signal.SIGTERM)
        pytest.fail(f"{name} ended {flow_run.state.name}: {flow_run.state.message}\n"
                    f"{worker.communicate(timeout=60)[0][-4000:]}")


def test_a_storm_after_normal_days_is_drift_and_retrains_the_models_it_moved(
        stack, settings) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    land(settings, days=3, end=today - timedelta(days=2), scenario="normal", seed=1)
    run("nightly/nightly", stack)
    sessions = session_factory(settings.db_url)
    with sessions() as s:
        champions = s.scalars(select(DecisionRecord.model_name)
                              .where(DecisionRecord.promoted)).all()
    assert sorted(champions) == sorted(FLEET)  # a champion for every model of the fleet

    land(settings, days=2, end=today, scenario="storm", seed=2)
    run("monitor/monitor", stack)
    with sessions() as s:
        verdicts = dict(s.execute(select(DriftRecord.model_name, DriftRecord.verdict)
                                  .order_by(DriftRecord.id)).all())  # the latest per model
    drifted = sorted(m for m, v in verdicts.items() if v == "drift")
    assert drifted, verdicts

    done = wait_for_final_runs("retrain/retrain", len(drifted), RETRAIN_WAIT_S)
    assert sorted(r.parameters["model"] for r in done) == drifted
    assert all(r.state.is_completed() for r in done), [(r.name, r.state.message) for r in done]
    with sessions() as s:
        retrains = s.scalars(select(TrainingJob).where(TrainingJob.trigger == "retrain")).all()
        decisions = {d.model_name: d for d in s.scalars(
            select(DecisionRecord).order_by(DecisionRecord.id))}  # the latest per model
    assert sorted(j.model_name for j in retrains) == drifted
    assert all(j.status == "completed" and j.dataset_version for j in retrains)
    by_run = {str(r.id): r.parameters["model"] for r in done}
    for job in retrains:
        decision = decisions[job.model_name]
        assert decision.decided_by == f"flow-run:{job.flow_run_id}"  # decided by the retrain
        assert by_run[job.flow_run_id] == job.model_name
        assert decision.dataset_version == job.dataset_version  # the rebuilt dataset
