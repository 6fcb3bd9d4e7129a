"""Each stage as its own small flow, for running one step from the CLI (`oceanml run <stage>`)."""

from __future__ import annotations

from prefect import flow

from core.params import run_profile
from flows.release_check import release_check
from flows.score import score
from tasks.dataset import DatasetVersion, build_dataset_task, latest_dataset_task
from tasks.drift import drift_task
from tasks.enrich import enrich_task
from tasks.evaluate import evaluate_task
from tasks.ingest import IngestResult, ingest_task
from tasks.promote import promote_task
from tasks.results import (
    DriftOutcome,
    EnrichSummary,
    EvaluationResult,
    PromotionResult,
    TrainingResult,
)
from tasks.train import train_task
from tasks.training_records import latest_training_task


@flow(name="ingest")
def ingest_flow() -> IngestResult:
    return ingest_task()


@flow(name="enrich")
def enrich_flow() -> EnrichSummary:
    return enrich_task()


@flow(name="dataset")
def dataset_flow(model: str = "plastic-detector", profile: str | None = None
                 ) -> DatasetVersion:
    return build_dataset_task(model, profile=run_profile(profile))


@flow(name="train")
def train_flow(
    model: str = "plastic-detector", dataset_version: str | None = None,
    max_epochs: int | None = None, backbone: str | None = None, profile: str | None = None,
    job_id: int | None = None,
) -> TrainingResult:
    """Train ``model``; the train deployment runs this with the job its caller queued."""
    version = dataset_version or latest_dataset_task(model)
    return train_task(model, version, max_epochs=max_epochs, backbone=backbone,
                      profile=run_profile(profile), job_id=job_id)


@flow(name="evaluate")
def evaluate_flow(model: str = "plastic-detector") -> EvaluationResult:
    latest = latest_training_task(model)
    return evaluate_task(model, latest.dataset_version, latest.model_version)


@flow(name="drift")
def drift_flow(model: str = "plastic-detector") -> DriftOutcome:
    return drift_task(model, latest_dataset_task(model))


@flow(name="promote")
def promote_flow(model: str = "plastic-detector") -> PromotionResult:
    latest = latest_training_task(model)
    evaluation = evaluate_task(model, latest.dataset_version, latest.model_version)
    return promote_task(model, evaluation)


STAGE_FLOWS = {
    "ingest": ingest_flow, "enrich": enrich_flow, "dataset": dataset_flow, "train": train_flow,
    "evaluate": evaluate_flow, "drift": drift_flow, "promote": promote_flow, "score": score,
    "release-check": release_check,
}
