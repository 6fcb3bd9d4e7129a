"""prefect.yaml registers against a real Prefect server through the real CLI."""

from __future__ import annotations

import os

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from tests.deployed import REPO, prefect


def deploy_on_pool(deployment: str, pool: str) -> dict[str, str]:
    """``deployment`` of prefect.yaml deployed on a process pool of its own, and the
    environment a worker on that pool polls the harness with (every second)."""
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OCEANML_REPO_DIR": str(REPO),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    created = prefect("work-pool", "create", pool, "--type", "process", env=env)
    assert created.returncode == 0 or "already exists" in created.stdout, created.stdout
    deployed = prefect("--no-prompt", "deploy", "--name", deployment, "--pool", pool, env=env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return env


@pytest.fixture
def env(prefect_harness) -> dict[str, str]:
    """The CLI pointed at the harness server, with the work pool prefect.yaml names."""
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OCEANML_REPO_DIR": str(REPO)}
    for pool in ("oceanml-process", "oceanml-gpu"):
        prefect("work-pool", "create", pool, "--type", "process", env=env)
    return env


def test_prefect_yaml_deploys_the_nightly_and_monitor_schedules(env) -> None:
    deployed = prefect("--no-prompt", "deploy", "--all", env=env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    listed = prefect("deployment", "ls", env=env)  # a filter request without a limit
    assert listed.returncode == 0 and "nightly/nightly" in listed.stdout, listed.stderr
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("nightly/nightly")
    assert deployment.entrypoint == "flows/nightly.py:nightly"
    assert deployment.work_pool_name == "oceanml-process"
    schedule = deployment.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "UTC")
    assert deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": str(REPO)}
    assert deployment.parameters == {}  # the fleet of params.yaml, the zoo's profile
    with get_client(sync_client=True) as client:
        monitor = client.read_deployment_by_name("monitor/monitor")
    assert monitor.entrypoint == "flows/monitor.py:monitor"
    assert (monitor.schedules[0].schedule.cron, monitor.schedules[0].schedule.timezone) == \
        ("30 * * * *", "UTC")


def test_drift_events_start_the_retrain_deployment(env) -> None:
    import time

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events import emit_event

    deployed = prefect("--no-prompt", "deploy", "--name", "retrain", env=env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/retrain")
        assert deployment.global_concurrency_limit.limit == 1  # 3.8 keeps it here
        assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
        linked = [a for a in client.read_automations()
                  if any(getattr(x, "deployment_id", None) == deployment.id for x in a.actions)]
        assert len(linked) == 1 and linked[0].trigger.expect == {"oceanml.drift.detected"}

    emit_event(event="oceanml.drift.detected",
               resource={"prefect.resource.id": "oceanml.model.algae-bloom",
                         "prefect.resource.name": "algae-bloom"},
               payload={"reason": "5/11 features drifted"})
    runs = []
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while not runs and time.monotonic() < deadline:
            time.sleep(1)
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment.id])))
    assert len(runs) == 1
    assert runs[0].parameters["model"] == "algae-bloom"
    assert runs[0].parameters["reason"] == "5/11 features drifted"


def test_the_score_deployment_runs_hourly_and_on_promotion(env) -> None:
    import time

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events import emit_event

    deployed = prefect("--no-prompt", "deploy", "--name", "score", env=env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("score/score")
        schedule = deployment.schedules[0].schedule
        assert (schedule.cron, schedule.timezone) == ("15 * * * *", "UTC")
        assert deployment.entrypoint == "flows/score.py:score"
        linked = [a for a in client.read_automations()
                  if any(getattr(x, "deployment_id", None) == deployment.id for x in a.actions)]
        assert len(linked) == 1 and linked[0].trigger.expect == {"oceanml.model.promoted"}

    emit_event(event="oceanml.model.promoted",
               resource={"prefect.resource.id": "oceanml.model.debris-classifier",
                         "prefect.resource.name": "debris-classifier"},
               payload={"version": "4", "previous": "3", "reason": "beats the champion"})
    runs = []
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while not runs and time.monotonic() < deadline:
            time.sleep(1)
            runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment.id])))
                    if r.parameters.get("model") == "debris-classifier"]  # not the hourly ones
    assert len(runs) == 1
    assert float(runs[0].parameters["last_days"]) == 2.0  # the drift window


def test_the_doctor_reads_the_prefect_server_and_its_work_pools(env, settings, monkeypatch):
    from core.settings import get_settings
    from oceanml.doctor import check_prefect

    monkeypatch.setenv("PREFECT_API_URL", env["PREFECT_API_URL"])
    monkeypatch.setenv("OCEANML_TRAIN_WORK_POOL", "oceanml-gpu")
    get_settings.cache_clear()
    found = check_prefect(get_settings())
    assert found.ok and found.detail.endswith("work pools oceanml-gpu, oceanml-process")
    monkeypatch.setenv("OCEANML_SCORE_WORK_POOL", "gpu-nowhere")
    get_settings.cache_clear()
    missing = check_prefect(get_settings())
    assert not missing.ok and missing.detail.endswith("no work pool gpu-nowhere")
    assert missing.fix.startswith("prefect work-pool create NAME")
