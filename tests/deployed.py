"""Helpers for tests that drive prefect.yaml's deployments on a real Prefect server (the
harness or the production stack): the CLI, schedules out of the way, runs of a deployment,
simulated days landed where the settings say."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
)
from prefect.client.schemas.filters import FlowRunFilterStateType as StateType

from core.store import filesystem
from oceanml.simulator import simulate, write_landing

REPO = Path(__file__).resolve().parents[1]


def prefect(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "prefect"
    return subprocess.run([str(cli), *args], cwd=REPO, env=env, capture_output=True, text=True)


def unschedule(*names: str) -> None:
    """Remove the deployments' schedules and the runs already scheduled from them."""
    with get_client(sync_client=True) as client:
        for name in names:
            deployment = client.read_deployment_by_name(name)
            for schedule in client.read_deployment_schedules(deployment.id):
                client.delete_deployment_schedule(deployment.id, schedule.id)
            for flow_run in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=StateType(any_=["SCHEDULED"])))):
                client.delete_flow_run(flow_run.id)


def set_default_parameters(name: str, **parameters: object) -> None:
    """Add ``parameters`` to the defaults of deployment ``name``, as an operator edits them in
    the UI: runs an automation starts get them too (the server merges them under its own)."""
    from prefect.client.schemas.actions import DeploymentUpdate

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        client.update_deployment(deployment.id, DeploymentUpdate(
            parameters={**deployment.parameters, **parameters}))


def deployment_runs(name: str) -> list:
    """Every flow run of deployment ``name`` (``flow/deployment``)."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        return client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment.id])))


def land(settings, *, days: int, end: datetime, scenario: str, seed: int) -> None:
    """``days`` simulated days of four devices in the landing ``settings`` name."""
    write_landing(filesystem(settings.landing_url, settings),
                  simulate(days=days, devices=4, per_day=60, end=end, scenario=scenario,
                           seed=seed, annotated_fraction=0.8), faults=False)


def wait_for_final_runs(name: str, count: int, timeout_s: float) -> list:
    """The runs of deployment ``name`` in a final state, once there are ``count`` of them (or
    whatever there is after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = [r for r in deployment_runs(name) if r.state and r.state.is_final()]
        if len(done) >= count or time.monotonic() > deadline:
            return done
        time.sleep(3)


def wait_until(what: str, check, timeout_s: float, every_s: float = 2.0):
    """``check()``'s first truthy answer; the test fails naming ``what`` after ``timeout_s``.
    An exception counts as no answer yet (a server restarting answers nothing for a while)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:
            found = None
        if found:
            return found
        time.sleep(every_s)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s")


def alive(pid: int) -> bool:
    """Running, not a zombie nobody reaped (a container's init may not reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (a worker may start its runs in sessions of
    their own, out of reach of its process group)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it."""
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def stop_worker(worker: subprocess.Popen, grace_s: float = 30.0) -> str:
    """Stop a ``prefect worker`` the test started (in a session of its own, output piped) and
    return its log: SIGTERM to its group, then, past ``grace_s`` (a worker shutting down on a
    loaded machine can take minutes), SIGKILL to it and everything it started. A worker that
    outlived its test would take the next test's runs."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGTERM)
    try:
        return worker.communicate(timeout=grace_s)[0] or ""
    except subprocess.TimeoutExpired:
        kill_tree(worker.pid)
        return worker.communicate(timeout=60)[0] or ""
