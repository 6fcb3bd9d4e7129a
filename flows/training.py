"""Training as a step of the nightly and retrain flows: in-process, or on a GPU work pool.

With ``OCEANML_TRAIN_WORK_POOL`` set, the step starts the ``train`` deployment
(``OCEANML_TRAIN_DEPLOYMENT``, on that pool) with ``run_deployment`` and waits for it, so the
flow itself can run on a small CPU worker while a GPU worker trains; the run shows up as a
subflow in the UI. Without it, the step trains in the flow's own process.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.deployments import run_deployment

from oceanml.settings import get_settings
from tasks.train import recorded_training_task, train_task


def train_step(model: str, dataset_version: str, max_epochs: int | None = None,
               backbone: str | None = None) -> dict[str, Any]:
    """Train ``model`` on ``dataset_version`` where the settings say; returns the training."""
    settings = get_settings()
    if not settings.train_work_pool:
        return train_task(model, dataset_version, max_epochs=max_epochs, backbone=backbone)
    parameters = {"model": model, "dataset_version": dataset_version, "max_epochs": max_epochs,
                  "backbone": backbone}
    check_deployment(settings.train_deployment, settings.train_work_pool)
    get_run_logger().info("training %s on work pool %s through %s", model,
                          settings.train_work_pool, settings.train_deployment)
    run = run_deployment(settings.train_deployment, parameters=parameters, timeout=None)
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise RuntimeError(f"train deployment run {run.name} ({run.id}) ended {state}: see its "
                           "logs in the Prefect UI")
    return recorded_training_task(model, dataset_version, max_epochs, backbone,
                                  by_flow_run=str(run.id))


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
