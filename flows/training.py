"""Training as a step of the nightly and retrain flows: in-process, or on a GPU work pool.

With ``OCEANML_TRAIN_WORK_POOL`` set, the step starts the ``train`` deployment
(``OCEANML_TRAIN_DEPLOYMENT``, on that pool) with ``run_deployment`` and waits for it, so the
flow itself can run on a small CPU worker while a GPU worker trains; the run shows up as a
subflow in the UI. Without it, the step trains in the flow's own process.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from prefect import get_run_logger
from prefect.deployments import run_deployment

from core.database import session_factory
from core.jobs import finish_job, job_end, queue_job
from core.lineage import flow_run_id
from core.settings import get_settings
from tasks.results import TrainingResult
from tasks.train import resolve, train_task
from tasks.training_records import recorded_training_task

LOCAL_TRAINING = threading.Lock()


def train_step(model: str, dataset_version: str, max_epochs: int | None = None,
               backbone: str | None = None, profile: str | None = None,
               trigger: str = "nightly", job_id: int | None = None) -> TrainingResult:
    """Train ``model`` on ``dataset_version`` where the settings say; returns the training.

    The training job (``oceanml jobs``) is queued here, before it waits for a training slot
    or a worker, unless the caller queued it (``job_id``). In-process trainings take the
    process's one training slot: each already uses every core (or the GPU), so the fleet's
    branches overlap everything but their trainings."""
    settings = get_settings()
    sessions = session_factory(settings.db_url)
    if settings.train_work_pool:  # refused before a job is queued that nothing would run
        check_deployment(settings.train_deployment, settings.train_work_pool)
    if job_id is None:
        _, params = resolve(settings, model, max_epochs, backbone, profile)
        job_id = queue_job(sessions, model, dataset_version, trigger, params.max_epochs,
                           flow_run_id())
    if not settings.train_work_pool:
        with LOCAL_TRAINING:
            return train_task(model, dataset_version, max_epochs=max_epochs, backbone=backbone,
                              profile=profile, job_id=job_id)
    parameters = {"model": model, "dataset_version": dataset_version, "max_epochs": max_epochs,
                  "backbone": backbone, "profile": profile, "job_id": job_id}
    get_run_logger().info("training %s on work pool %s through %s", model,
                          settings.train_work_pool, settings.train_deployment)
    try:
        run = run_deployment(settings.train_deployment, parameters=parameters, timeout=None)
    except BaseException as exc:  # the API failed, or this flow was cancelled while waiting
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
