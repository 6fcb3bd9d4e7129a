"""Retrain on drift: rebuild the dataset, train, evaluate against the champion, promote.

Started by the ``oceanml.drift.detected`` event (see ``prefect.yaml``). A storm of events
starts one run: the deployment runs one at a time and cancels newcomers, a run within the
cool-down of the last training does nothing, and every stage is idempotent.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.training import train_step
from tasks.dataset import build_dataset_task
from tasks.evaluate import evaluate_task
from tasks.promote import promote_task
from tasks.train import recent_training_task


@flow(name="retrain", log_prints=True)
def retrain(
    model: str = "plastic-detector",
    reason: str = "",
    cooldown_hours: float = 6.0,
    max_epochs: int | None = None,
    backbone: str | None = None,
) -> dict[str, Any]:
    """Retrain ``model`` because of ``reason`` unless it was trained within the cool-down."""
    recent = recent_training_task(model, cooldown_hours)
    if recent:
        get_run_logger().info("retrain of %s skipped: v%s was trained at %s, within %.1f h",
                              model, recent["model_version"], recent["created_at"],
                              cooldown_hours)
        return {"skipped": True, "recent": recent, "reason": reason}
    dataset = build_dataset_task(model)
    train = train_step(model, dataset["version"], max_epochs=max_epochs, backbone=backbone)
    evaluation = evaluate_task(model, dataset["version"], train["model_version"])
    promote = promote_task(model, evaluation)
    print(f"retrain of {model} ({reason or 'manual'}): dataset {dataset['version']}, "
          f"v{train['model_version']}, {'promoted' if promote['promoted'] else 'not promoted'}: "
          f"{promote['reason']}")
    return {"skipped": False, "reason": reason, "dataset": dataset, "train": train,
            "evaluate": evaluation, "promote": promote}


if __name__ == "__main__":
    retrain()
