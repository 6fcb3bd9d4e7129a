"""prefect.yaml registers against a real Prefect server through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

REPO = Path(__file__).resolve().parents[2]


def prefect(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "prefect"
    return subprocess.run([str(cli), *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_prefect_yaml_deploys_the_nightly_schedule(prefect_harness) -> None:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OCEANML_REPO_DIR": str(REPO)}
    prefect("work-pool", "create", "oceanml-process", "--type", "process", env=env)
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
