"""Training records the flows read back: the training a train deployment recorded (by its
key, from the DB every worker shares), the newest training of a model, and a retrain's claim
on its training job under the cool-down."""

from __future__ import annotations

from datetime import timedelta

from prefect import task
from sqlalchemy import select

from core.database import session_factory
from core.jobs import claim_retrain
from core.records import TrainingRun
from core.settings import get_settings
from tasks.results import LatestTraining, RecentRetrain, RetrainClaim, TrainingResult
from tasks.train import resolve


@task(name="recorded-training", retries=2, retry_delay_seconds=5, timeout_seconds=300)
def recorded_training_task(model: str, dataset_version: str, max_epochs: int | None = None,
                           backbone: str | None = None, by_flow_run: str | None = None,
                           profile: str | None = None) -> TrainingResult:
    """The training a train deployment run recorded, found by its training key in the DB
    (shared by every worker), so no result storage has to be shared with GPU workers."""
    settings = get_settings()
    spec, params = resolve(settings, model, max_epochs, backbone, profile)
    key = params.training_key(spec, dataset_version)
    with session_factory(settings.db_url)() as session:
        row = session.scalar(select(TrainingRun).where(TrainingRun.training_key == key))
    if row is None:
        raise LookupError(f"no training of {model} on {dataset_version} with key {key} was "
                          "recorded: does the worker use the same params.yaml and database?")
    return TrainingResult(row.model_version, row.mlflow_run_id, key, row.metrics,
                          reused=by_flow_run is None or row.flow_run_id != by_flow_run)


@task(name="latest-training", retries=2, retry_delay_seconds=5, timeout_seconds=300)
def latest_training_task(model: str) -> LatestTraining:
    """The newest recorded training of ``model``: its version and dataset."""
    settings = get_settings()
    with session_factory(settings.db_url)() as session:
        row = session.scalar(select(TrainingRun).where(TrainingRun.model_name == model)
                             .order_by(TrainingRun.id.desc()).limit(1))
    if row is None:
        raise ValueError(f"no training of {model!r} yet: run `oceanml run train` first")
    return LatestTraining(row.model_version, row.dataset_version)


@task(name="claim-retrain", retries=2, retry_delay_seconds=5, timeout_seconds=600)
def claim_retrain_task(model: str, cooldown_hours: float) -> RetrainClaim:
    """Queue this retrain's training job, unless a retrain of ``model`` was queued within the
    cool-down: the claim names the job queued now, or (``job_id`` None) that recent one."""
    sessions = session_factory(get_settings().db_url)
    job_id, recent = claim_retrain(sessions, model, timedelta(hours=max(cooldown_hours, 0)))
    if job_id is not None:
        return RetrainClaim(job_id)
    return RetrainClaim(None, RecentRetrain(recent.id, recent.status,
                                            recent.queued_at.isoformat(), recent.model_version))
