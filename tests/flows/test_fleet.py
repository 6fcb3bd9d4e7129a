"""The fleet's branches in processes of their own, under Prefect's harness: a task blocked in
the kernel (an ``open`` of a FIFO nobody writes: what a stalled disk, pipe or socket looks
like) times out in its branch while the others finish; a branch past its deadline is stopped
with what it started, its run marked Crashed and its training job closed failed, by name."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter

from core.database import session_factory
from core.jobs import list_jobs, queue_job
from core.lineage import flow_run_id
from core.settings import get_settings
from core.threads import usable_cores
from flows import fleet
from flows.fleet import BranchFailure, run_branches
from flows.timeouts import timed
from tests.deployed import alive

pytestmark = pytest.mark.slow

THREAD_WARNING = "Timeouts in worker threads cannot interrupt"
BRANCH_TIMEOUT_S = 90


@task(name="read-stalled", timeout_seconds=600)
def read_with_timeout(path: str) -> str:
    return Path(path).read_text()


@task
def read_without_timeout(model: str, path: str) -> str:
    """Blocks for ever, holding a queued training job; the ``deaf`` model also deafens itself
    to the parent's stop signal and starts a child, as a stuck native library might."""
    queue_job(session_factory(get_settings().db_url), model, "ds", "nightly",
              flow_run_id=flow_run_id())
    if model == "deaf":
        signal.signal(fleet.STOP_SIGNAL, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "600"])
        Path(path + ".child").write_text(str(child.pid))
    return Path(path).read_text()


@flow(name="stall-branch", flow_run_name="{model}")
def stall_branch(model: str, fifo: str) -> str:
    if model == "fine":
        return "fine finished"
    if model == "timed":
        return timed(read_with_timeout)(fifo)
    return read_without_timeout(model, fifo)


@flow(name="fleet-under-test")
def fleet_under_test(models: list[str], fifo: str) -> dict:
    return {"outcomes": run_branches(models, 0, stall_branch, fifo=fifo),
            "run_id": flow_run_id()}


@flow(name="threads-branch", flow_run_name="{model}")
def threads_branch(model: str) -> tuple[int, int]:
    """The branch's torch threads, and those it trains with."""
    import torch

    from core.threads import training_threads

    overlapping = torch.get_num_threads()
    with training_threads():
        return overlapping, torch.get_num_threads()


@flow(name="threads-fleet")
def threads_fleet(models: list[str]) -> dict:
    return run_branches(models, 0, threads_branch)


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "stalled"
    os.mkfifo(path)
    return str(path)


def branch_runs(parent: str) -> dict:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        return {r.name: (r, client.read_logs(LogFilter(flow_run_id={"any_": [r.id]})))
                for r in runs}


def test_a_task_blocked_in_the_kernel_times_out_in_its_branch_and_the_others_finish(
        prefect_harness, settings, fifo, monkeypatch) -> None:
    monkeypatch.setenv("OCEANML_STAGE_TIMEOUTS", '{"read-stalled": 3}')  # its own is 600
    get_settings.cache_clear()
    start = time.monotonic()
    result = fleet_under_test(["timed", "fine"], fifo)
    elapsed = time.monotonic() - start
    outcomes = result["outcomes"]
    assert outcomes == {"timed": BranchFailure(
        "StageTimeout: read-stalled ran past its timeout of 3 s and was stopped "
        "(OCEANML_STAGE_TIMEOUTS sets it)"), "fine": "fine finished"}
    assert elapsed < 240  # the open() never returns by itself: only the alarm ended it
    runs = branch_runs(result["run_id"])
    assert set(runs) == {"timed", "fine"}  # both ran as subflows of the parent run
    assert runs["timed"][0].state.is_failed()
    messages = [log.message for _, logs in runs.values() for log in logs]
    assert any("Finished in state Completed" in m for m in messages)  # the branches' logs came
    assert any("read-stalled ran past its timeout" in m for m in messages)
    assert not any(THREAD_WARNING in log.message for _, logs in runs.values() for log in logs)


def test_branches_past_their_deadline_are_stopped_with_what_they_started(
        prefect_harness, settings, fifo, monkeypatch) -> None:
    # long enough for the fine branch's subflow on a loaded machine: it once needed over 30 s
    # beside the production stack's lifecycle and a benchmark, and over 45 s beside the
    # stack's retrains (CI, 2026-12-07); the stuck and deaf branches wait it out, idle
    monkeypatch.setenv("OCEANML_BRANCH_TIMEOUT_S", str(BRANCH_TIMEOUT_S))
    monkeypatch.setattr(fleet, "GRACE_S", 3.0)  # from the stop signal to SIGKILL
    get_settings.cache_clear()
    result = fleet_under_test(["stuck", "deaf", "fine"], fifo)

    def reason(model: str) -> str:
        return (f"the {model} branch passed its deadline of {BRANCH_TIMEOUT_S} s "
                "(OCEANML_BRANCH_TIMEOUT_S) and was stopped")

    assert result["outcomes"] == {"stuck": BranchFailure(reason("stuck")),
                                  "deaf": BranchFailure(reason("deaf")), "fine": "fine finished"}
    runs = branch_runs(result["run_id"])
    # the stuck branch ended itself on the stop signal: Prefect recorded the crash, with the
    # reason;
    # the deaf one was killed, with its child, and the parent marked its run Crashed
    assert runs["stuck"][0].state.is_crashed() and reason("stuck") in runs["stuck"][0].state.message
    assert runs["deaf"][0].state.is_crashed() and runs["deaf"][0].state.message == reason("deaf")
    assert not alive(int(Path(fifo + ".child").read_text()))
    sessions = session_factory(settings.db_url)
    for model in ("stuck", "deaf"):
        (job,) = list_jobs(sessions, model)
        assert job.status == "failed" and reason(model) in job.error, (model, job.error)


def test_each_branch_takes_its_share_of_the_cores_and_training_what_the_others_leave(
        prefect_harness, settings, monkeypatch) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the suite's own share, gone
        monkeypatch.delenv(name, raising=False)
    cores = usable_cores()
    share = max(1, cores // 2)
    assert threads_fleet(["a", "b"]) == {m: (share, max(share, cores - share)) for m in "ab"}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an operator's setting stands, even alone
    assert threads_fleet(["alone"]) == {"alone": (1, 1)}
