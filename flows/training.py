"""Training as a step of the nightly and retrain flows: in-process, or on a GPU work pool.

With ``OCEANML_TRAIN_WORK_POOL`` set, the step starts the ``train`` deployment
(``OCEANML_TRAIN_DEPLOYMENT``, on that pool) with ``run_deployment`` and waits for it, so the
flow itself can run on a small CPU worker while a GPU worker trains; the run shows up as a
subflow in the UI. Without it, the step trains in the flow's own process.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from filelock import FileLock
from prefect import get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from sqlalchemy.orm import sessionmaker

from core.database import session_factory
from core.jobs import as_utc, finish_job, job_end, last_beat, queue_job
from core.lineage import flow_run_id
from core.settings import Settings, get_settings
from core.threads import training_threads
from flows.timeouts import timed
from tasks.results import TrainingResult
from tasks.train import resolve, train_task
from tasks.training_records import recorded_training_task

POLL_S = 5.0
CANCEL_GRACE_S = 30.0


def training_slot(settings: Settings) -> FileLock:
    """The one in-process training at a time of this home: the fleet's branches are
    processes of their own, so the slot is a file lock (the OS lets go of it when its holder
    dies, so a killed branch never keeps it)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    return FileLock(settings.home.resolve() / "training.lock")


def train_step(model: str, dataset_version: str, max_epochs: int | None = None,
               backbone: str | None = None, profile: str | None = None,
               trigger: str = "nightly", job_id: int | None = None) -> TrainingResult:
    """Train ``model`` on ``dataset_version`` where the settings say; returns the training.

    The training job (``oceanml jobs``) is queued here, before it waits for a training slot
    or a worker, unless the caller queued it (``job_id``). In-process trainings take the
    home's one training slot (:func:`training_slot`), with the cores the other branches leave
    (:mod:`core.threads`), so the fleet's branches overlap everything but their trainings."""
    settings = get_settings()
    sessions = session_factory(settings.db_url)
    if settings.train_work_pool:  # refused before a job is queued that nothing would run
        check_deployment(settings.train_deployment, settings.train_work_pool)
    if job_id is None:
        _, params = resolve(settings, model, max_epochs, backbone, profile)
        job_id = queue_job(sessions, model, dataset_version, trigger, params.max_epochs,
                           flow_run_id())
    if not settings.train_work_pool:
        with training_slot(settings), training_threads():
            return timed(train_task)(model, dataset_version, max_epochs=max_epochs,
                                     backbone=backbone, profile=profile, job_id=job_id)
    parameters = {"model": model, "dataset_version": dataset_version, "max_epochs": max_epochs,
                  "backbone": backbone, "profile": profile, "job_id": job_id}
    get_run_logger().info("training %s on work pool %s through %s", model,
                          settings.train_work_pool, settings.train_deployment)
    started = None
    try:
        started = run_deployment(settings.train_deployment, parameters=parameters, timeout=0)
        run = watch_training(started.id, sessions, job_id, settings)
    except BaseException as exc:  # the API failed, or this flow was cancelled while waiting
        if started is not None and not isinstance(exc, TrainingLost):
            _ask_to_cancel(started.id, f"its {model} branch ended: {type(exc).__name__}")
        finish_job(sessions, job_id, job_end(exc), error=exc)
        raise
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        finish_job(sessions, job_id, "cancelled" if run.state and run.state.is_cancelled()
                   else "failed", error=f"train deployment run {run.name} ended {state}")
        raise RuntimeError(f"train deployment run {run.name} ({run.id}) ended {state}: see its "
                           "logs in the Prefect UI")
    recorded = recorded_training_task(model, dataset_version, max_epochs, backbone,
                                      by_flow_run=str(run.id), profile=profile)
    return replace(recorded, job_id=job_id)


class TrainingLost(RuntimeError):
    """A training on the work pool that no worker started, or whose worker went silent."""


def watch_training(run_id: Any, sessions: sessionmaker, job_id: int, settings: Settings,
                   poll_s: float = POLL_S) -> FlowRun:
    """Wait for the train deployment's run ``run_id`` to end; the run once it has.

    A run that has not started while its pool has had no online worker for
    ``OCEANML_TRAIN_START_TIMEOUT_S`` (a run queued behind busy workers waits), or that
    started and whose training job has had no heartbeat for
    ``OCEANML_TRAIN_HEARTBEAT_TIMEOUT_S`` (the worker died, or lost the DB), is cancelled and
    its job closed failed; then :class:`TrainingLost` says which bound it passed."""
    from prefect.client.orchestration import get_client

    no_worker_since: float | None = None
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            if run.start_time is None:
                online = _online_workers(client, settings.train_work_pool)
                no_worker_since = None if online else (no_worker_since or time.monotonic())
                reason = _unstarted(run, settings, no_worker_since)
            else:
                reason = _silent(run, sessions, job_id, settings)
            if reason:
                _cancel(client, run, reason)
                finish_job(sessions, job_id, "failed", error=reason)
                raise TrainingLost(reason)
            time.sleep(poll_s)


def _online_workers(client: Any, pool: str | None) -> int:
    """Workers of ``pool`` that are online and have beaten within three of their intervals
    (a server that runs no foreman never marks a dead worker offline)."""
    from prefect.client.schemas.objects import WorkerStatus

    now = datetime.now(UTC)
    return sum(w.status == WorkerStatus.ONLINE and w.last_heartbeat_time is not None
               and (now - as_utc(w.last_heartbeat_time)).total_seconds()
               <= 3 * (w.heartbeat_interval_seconds or 30)
               for w in client.read_workers_for_work_pool(work_pool_name=pool))


def _unstarted(run: FlowRun, settings: Settings, no_worker_since: float | None) -> str | None:
    """Why a run that never started counts as lost: its pool has had no online worker for
    the start timeout."""
    if no_worker_since is None or \
            time.monotonic() - no_worker_since <= settings.train_start_timeout_s:
        return None
    return (f"train deployment run {run.name} was not started: pool "
            f"{settings.train_work_pool} had no online worker for "
            f"{settings.train_start_timeout_s:.0f} s (OCEANML_TRAIN_START_TIMEOUT_S); it was "
            "cancelled")


def _silent(run: FlowRun, sessions: sessionmaker, job_id: int, settings: Settings
            ) -> str | None:
    """Why a started run counts as lost: its job's last heartbeat (or its last state change,
    whichever is newer) is older than the heartbeat timeout."""
    job = last_beat(sessions, job_id)
    since = as_utc(run.state.timestamp) if run.state else as_utc(run.start_time)
    if job and job.updated_at:
        since = max(since, as_utc(job.updated_at))
    silent = (datetime.now(UTC) - since).total_seconds()
    if silent <= settings.train_heartbeat_timeout_s:
        return None
    return (f"train deployment run {run.name} sent no heartbeat for {silent:.0f} s "
            f"(OCEANML_TRAIN_HEARTBEAT_TIMEOUT_S is {settings.train_heartbeat_timeout_s:.0f}): "
            f"its worker on pool {settings.train_work_pool} was lost; it was cancelled")


def _ask_to_cancel(run_id: Any, reason: str) -> None:
    """Cancelling, without waiting: the branch that started the run is ending."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
        if state is None or not state.is_final():
            client.set_flow_run_state(run_id, Cancelling(message=reason), force=True)


def _cancel(client: Any, run: FlowRun, reason: str) -> None:
    """Ask the worker to stop the run (Cancelling); a worker that is gone never answers, so
    after a grace the run is set Cancelled with the reason, rather than stay Running."""
    from prefect.states import Cancelled, Cancelling

    if run.state is None or not run.state.is_running():  # no worker holds it: nothing to stop
        client.set_flow_run_state(run.id, Cancelled(message=reason), force=True)
        return
    client.set_flow_run_state(run.id, Cancelling(message=reason), force=True)
    deadline = time.monotonic() + CANCEL_GRACE_S
    while time.monotonic() < deadline:
        state = client.read_flow_run(run.id).state
        if state is not None and state.is_final():
            return
        time.sleep(1.0)
    client.set_flow_run_state(run.id, Cancelled(message=reason), force=True)


def check_deployment(name: str, pool: str) -> None:
    """Refuse early, by name, a deployment that is missing or sits on another pool."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise LookupError(f"no deployment {name!r}: run `prefect deploy --name "
                              f"{name.split('/')[-1]}` (see prefect.yaml)") from None
    if deployment.work_pool_name != pool:
        raise ValueError(f"deployment {name!r} is on work pool {deployment.work_pool_name!r}, "
                         f"but OCEANML_TRAIN_WORK_POOL is {pool!r}")
