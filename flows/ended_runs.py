"""Training jobs left open by a run that ended without closing them.

A run cancelled by its deadline, killed with its worker or crashed closes nothing itself: its
process is gone, or going. Two things close its jobs: the ``on_cancellation`` and
``on_crashed`` hook of the nightly, monitor and retrain flows (:func:`close_jobs_hook`, for
the run and its subflows, where Prefect runs the hook), and at the start of each of those
flows :func:`close_orphaned_jobs`, for every open job whose run, or a run above it, has
ended; that one needs nothing of the dead process, so a job is closed at the latest when
the next run starts.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.exceptions import MissingContextError, ObjectNotFound
from sqlalchemy import select

from core.database import session_factory
from core.jobs import FINAL, fail_open_jobs
from core.records import TrainingJob
from core.settings import get_settings

MAX_DEPTH = 5  # nightly > model-branch > train-gpu is three


def close_orphaned_jobs() -> int:
    """Close as failed every queued or running job whose flow run has ended (or sits under
    one that has), naming that run and how it ended. How many were closed. A run the API
    does not know is left alone: it may belong to another Prefect server."""
    sessions = session_factory(get_settings().db_url)
    with sessions() as session:
        run_ids = set(session.scalars(select(TrainingJob.flow_run_id).where(
            TrainingJob.status.not_in(FINAL), TrainingJob.flow_run_id.is_not(None))))
    if not run_ids:
        return 0
    closed = 0
    with get_client(sync_client=True) as client:
        for run_id in sorted(run_ids):
            if ended := _ended_run(client, run_id):
                closed += fail_open_jobs(sessions, run_id, ended)
    if closed:
        _logger().warning("closed %d training job(s) their ended runs left open", closed)
    return closed


def close_jobs_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_cancellation`` / ``on_crashed``: close the jobs of this run and of its subflows."""
    reason = _reason(flow_run.name, state)
    sessions = session_factory(get_settings().db_url)
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])))
    for run_id in [flow_run.id, *(child.id for child in children)]:
        fail_open_jobs(sessions, str(run_id), reason)


def _ended_run(client: Any, run_id: str) -> str | None:
    """Why the jobs of ``run_id`` can no longer be closed by it: the first ended run on the
    way up from it (a subflow's parent is the run of its parent task); None while it runs."""
    current: UUID | str | None = run_id
    for _ in range(MAX_DEPTH):
        try:
            run = client.read_flow_run(current)
        except ObjectNotFound:
            return None
        if run.state is not None and run.state.is_final():
            return _reason(run.name, run.state)
        if run.parent_task_run_id is None:
            return None
        try:
            current = client.read_task_run(run.parent_task_run_id).flow_run_id
        except ObjectNotFound:
            return None
    return None


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _reason(name: str, state: Any) -> str:
    message = f": {state.message}" if getattr(state, "message", None) else ""
    if state.is_cancelling() or state.is_cancelled():  # a hook sees Cancelling
        return f"its run {name} was cancelled{message}"
    return f"its run {name} ended {state.name}{message}"
