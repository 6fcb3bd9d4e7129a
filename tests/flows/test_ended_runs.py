"""Jobs a dead run left open are closed when the next run starts, from what the Prefect
server (the harness) says of their runs: ended, or under a run that ended."""

from __future__ import annotations

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.states import Crashed, Running

from core.jobs import list_jobs, queue_job
from flows.ended_runs import close_orphaned_jobs


@flow(name="ended-runs-parent")
def parent() -> None:
    """Never run: a flow for the runs the test makes."""


@task(name="ended-runs-step")
def step() -> None:
    """Never run: the task a subflow hangs under."""


def test_jobs_of_ended_runs_and_of_their_subflows_close_and_the_live_stay(prefect_harness,
                                                                          sessions):
    with get_client(sync_client=True) as client:
        crashed = client.create_flow_run(parent, name="killed-night", state=Running())
        client.set_flow_run_state(crashed.id, Crashed(message="process exited with 137"),
                                  force=True)
        under = client.create_task_run(step, crashed.id, dynamic_key="0")
        branch = client.create_flow_run(parent, name="orphan-branch", state=Running(),
                                         parent_task_run_id=under.id)
        live = client.create_flow_run(parent, name="live-night", state=Running())
    ids = {name: queue_job(sessions, "plastic-detector", None, "nightly", flow_run_id=str(run))
           for name, run in (("crashed", crashed.id), ("branch", branch.id), ("live", live.id))}
    unknown = queue_job(sessions, "plastic-detector", None, "nightly",
                        flow_run_id="00000000-0000-0000-0000-000000000000")

    assert close_orphaned_jobs() == 2
    jobs = {job.id: job for job in list_jobs(sessions, "plastic-detector")}
    for name in ("crashed", "branch"):  # the branch's own run still says Running
        assert jobs[ids[name]].status == "failed"
        assert jobs[ids[name]].error == ("its run killed-night ended Crashed: process exited "
                                         "with 137")
    assert jobs[ids["live"]].status == "queued"
    assert jobs[unknown].status == "queued"  # another server's run, perhaps: left alone
    assert close_orphaned_jobs() == 0
