"""Retrain on drift: rebuild the dataset with the new observations, train, evaluate on the new
split against the champion, and decide the promotion.

Started by ``oceanml.drift.detected`` for one model (see ``prefect.yaml``). A storm of events
starts one retrain per model: a run first claims the retrain under the model's lock, and a
retrain of that model queued within the cool-down makes it end at once, saying which one.
Every stage is idempotent.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from core.database import session_factory
from core.jobs import finish_job, set_job
from core.params import run_profile
from core.settings import get_settings
from flows.ended_runs import close_jobs_hook, close_orphaned_jobs
from flows.timeouts import timed
from flows.training import train_step
from tasks.dataset import build_dataset_task
from tasks.evaluate import evaluate_task
from tasks.promote import promote_task
from tasks.results import RetrainResult
from tasks.training_records import claim_retrain_task


def champion_profile(model: str) -> str | None:
    """The profile the champion was trained under (its ``profile`` tag): what a retrain
    started by an event, with no profile of its own, trains under too."""
    from core.registry import alias_version, client

    champion = alias_version(client(get_settings()), model)
    return champion.tags.get("profile") if champion else None


@flow(name="retrain", log_prints=True, on_cancellation=[close_jobs_hook],
      on_crashed=[close_jobs_hook])
def retrain(
    model: str = "plastic-detector",
    reason: str = "",
    cooldown_hours: float = 6.0,
    max_epochs: int | None = None,
    backbone: str | None = None,
    profile: str | None = None,
) -> RetrainResult:
    """Retrain ``model`` because of ``reason`` unless it was retrained within the cool-down.

    The profile: the one given, else ``OCEANML_PROFILE``, else the champion's, else the
    defaults."""
    close_orphaned_jobs()  # a retrain a deadline cancelled no longer counts as running
    claim = claim_retrain_task(model, cooldown_hours)
    if claim.job_id is None:
        recent = claim.recent
        get_run_logger().info("retrain of %s skipped: retrain job %s was queued at %s, within "
                              "the %.1f h cool-down", model, recent.job_id, recent.queued_at,
                              cooldown_hours)
        return RetrainResult(skipped=True, reason=reason, recent=recent)
    job_id, profile = claim.job_id, run_profile(profile or get_settings().profile
                                                    or champion_profile(model))
    sessions = session_factory(get_settings().db_url)
    try:
        dataset = timed(build_dataset_task)(model, profile=profile)
    except Exception as exc:
        finish_job(sessions, job_id, "failed", error=exc)
        raise
    set_job(sessions, job_id, dataset_version=dataset.version)
    train = train_step(model, dataset.version, max_epochs=max_epochs, backbone=backbone,
                       profile=profile, trigger="retrain", job_id=job_id)
    evaluation = timed(evaluate_task)(model, dataset.version, train.model_version)
    promote = timed(promote_task)(model, evaluation)
    print(f"retrain of {model} ({reason or 'manual'}): dataset {dataset.version}, "
          f"v{train.model_version}, {'promoted' if promote.promoted else 'not promoted'}: "
          f"{promote.reason}")
    return RetrainResult(False, reason, job_id, dataset=dataset, train=train,
                         evaluate=evaluation, promote=promote)


if __name__ == "__main__":
    retrain()
