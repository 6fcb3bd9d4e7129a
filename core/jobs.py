"""Training jobs a person can watch: a ``training_jobs`` row from the moment a training is
queued, moved by ``core.job_callback.JobCallback`` while Lightning trains (epoch of total,
progress), and
closed as completed, failed (with the error) or cancelled. ``oceanml jobs`` lists them; the
retrain cool-down counts from the last retrain job of a model.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from core.champion_history import model_lock
from core.lineage import flow_run_id
from core.records import TrainingJob
from core.secrets import known_secrets, scrub
from core.settings import get_settings

FINAL = ("completed", "failed", "cancelled")
MAX_ERROR_CHARS = 2000


def queue_job(sessions: sessionmaker, model: str, dataset_version: str | None, trigger: str,
              max_epochs: int | None = None, flow_run_id: str | None = None) -> int:
    """A new queued job; its id."""
    with sessions() as session:
        job = TrainingJob(model_name=model, dataset_version=dataset_version, trigger=trigger,
                          max_epochs=max_epochs, flow_run_id=flow_run_id)
        session.add(job)
        session.commit()
        return job.id


def set_job(sessions: sessionmaker, job_id: int, *, final: tuple[str, ...] = FINAL,
            **values: Any) -> None:
    """Update job ``job_id``'s columns, unless its status is one of ``final`` (a job that
    ended is left as it ended)."""
    with sessions() as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id,
                                                  TrainingJob.status.not_in(final))
                        .values(updated_at=datetime.now(UTC), **values))
        session.commit()


def reopen_job(sessions: sessionmaker, job_id: int) -> None:
    """Back to queued at the start of a (re)try: a retry of a failed, timed-out or
    interrupted attempt is the same job again; only a completed one stays as it is."""
    set_job(sessions, job_id, final=("completed",), status="queued", error=None,
            finished_at=None)


def job_end(exc: BaseException) -> str:
    """How an exception ends a job: ``cancelled`` for an interrupt (Ctrl-C, a signal),
    ``failed`` for the rest, timeouts and Prefect's cancellation of a timed-out task included
    (a retry may follow and reopen it)."""
    return "cancelled" if isinstance(exc, KeyboardInterrupt | SystemExit) else "failed"


def start_job(sessions: sessionmaker, job_id: int, max_epochs: int | None = None) -> None:
    """Running, on this host. A failed job runs again when Prefect retries its task."""
    set_job(sessions, job_id, final=("completed", "cancelled"), status="running",
            error=None, finished_at=None, worker=socket.gethostname(),
            started_at=datetime.now(UTC),
            **({"max_epochs": max_epochs} if max_epochs is not None else {}))


def finish_job(sessions: sessionmaker, job_id: int, status: str, *,
               model_version: str | None = None, reused: bool = False,
               error: BaseException | str | None = None) -> None:
    """Close the job: completed (with the version it made or reused), failed or cancelled."""
    if status not in FINAL:
        raise ValueError(f"a job ends {', '.join(FINAL)}, not {status!r}")
    message = None if error is None else scrub(
        error if isinstance(error, str) else f"{type(error).__name__}: {error}",
        known_secrets(get_settings()))
    values: dict[str, Any] = {"status": status, "finished_at": datetime.now(UTC),
                              "error": message[:MAX_ERROR_CHARS] if message else None}
    if status == "completed":
        values |= {"model_version": model_version, "reused": reused, "progress": 1.0}
    set_job(sessions, job_id, **values)


def fail_open_jobs(sessions: sessionmaker, flow_run_id: str, reason: str) -> int:
    """Close as failed, with ``reason``, every job of ``flow_run_id`` still queued or running:
    the run that would have closed them was killed. How many were."""
    with sessions() as session:
        closed = session.execute(update(TrainingJob).where(
            TrainingJob.flow_run_id == flow_run_id, TrainingJob.status.not_in(FINAL))
            .values(status="failed", error=reason[:MAX_ERROR_CHARS],
                    finished_at=datetime.now(UTC), updated_at=datetime.now(UTC)))
        session.commit()
        return closed.rowcount


@contextmanager
def heartbeat(sessions: sessionmaker, job_id: int, every_s: float) -> Iterator[None]:
    """Touch the job's ``updated_at`` every ``every_s`` while the block runs: a flow waiting
    on a training in another process (a GPU worker's) tells a live one from a lost one by
    it. A hung training is ended by its own task timeout; this only says the process lives."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                set_job(sessions, job_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                continue

    thread = threading.Thread(target=beat, name=f"job-{job_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(every_s)  # a beat stuck on an unreachable DB does not hold the task


def last_beat(sessions: sessionmaker, job_id: int) -> TrainingJob | None:
    """The job as it stands (its status and its last heartbeat, ``updated_at``)."""
    with sessions() as session:
        return session.get(TrainingJob, job_id)


def list_jobs(sessions: sessionmaker, model: str | None = None, limit: int = 20
              ) -> list[TrainingJob]:
    """The newest jobs first."""
    query = select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit)
    if model:
        query = query.where(TrainingJob.model_name == model)
    with sessions() as session:
        return list(session.scalars(query))


def last_retrain(sessions: sessionmaker, model: str) -> TrainingJob | None:
    """The newest retrain job of ``model`` that did not fail: the cool-down starts there."""
    with sessions() as session:
        return session.scalar(select(TrainingJob).where(
            TrainingJob.model_name == model, TrainingJob.trigger == "retrain",
            TrainingJob.status != "failed").order_by(TrainingJob.id.desc()).limit(1))


def claim_retrain(sessions: sessionmaker, model: str, cooldown: timedelta
                  ) -> tuple[int | None, TrainingJob | None]:
    """Queue a retrain job of ``model`` unless one was queued within ``cooldown``:
    (new job id, None), or (None, the recent job). Checked and queued under the model's lock,
    so a storm of drift events starting retrains at once queues exactly one."""
    run_id = flow_run_id()
    with model_lock(sessions, model):
        last = last_retrain(sessions, model)
        if last is not None and run_id and last.flow_run_id == run_id:
            return last.id, None  # this run claimed it already: a retried claim
        if last is not None and as_utc(last.queued_at) > datetime.now(UTC) - cooldown:
            return None, last
        return queue_job(sessions, model, None, "retrain", flow_run_id=run_id), None


def as_utc(moment: datetime) -> datetime:
    """``moment`` with its zone: SQLite gives naive datetimes back for UTC ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite drops the zone
