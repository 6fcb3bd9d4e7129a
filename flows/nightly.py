"""The nightly lifecycle: ingest -> enrich -> dataset -> train -> evaluate -> drift -> promote
-> score (the champion, new or kept, scores what it has not scored yet)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.score import score_step
from flows.training import train_step
from tasks.dataset import build_dataset_task
from tasks.drift import drift_task
from tasks.enrich import enrich_task
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.promote import promote_task
from tasks.score import distribution_task
from tasks.summary import summary_task


@flow(name="nightly", log_prints=True)
def nightly(
    model: str = "plastic-detector", max_epochs: int | None = None, backbone: str | None = None
) -> dict[str, Any]:
    """Run every stage once for ``model``; each stage is idempotent, so a re-run adds nothing."""
    ingest = ingest_task()
    enrich = enrich_task(wait_for=[ingest])
    dataset = build_dataset_task(model, wait_for=[enrich])
    drift = drift_task.submit(model, dataset["version"])  # runs beside training
    train = train_step(model, dataset["version"], max_epochs=max_epochs, backbone=backbone)
    evaluation = evaluate_task(model, dataset["version"], train["model_version"])
    promote = promote_task(model, evaluation, wait_for=[drift])
    scored = score_step(model)
    if scored.get("version"):
        distribution_task({model: scored["version"]})
    results = {"ingest": ingest, "enrich": enrich, "dataset": dataset, "train": train,
               "evaluate": evaluation, "drift": drift.result(), "promote": promote,
               "score": scored}
    print(summary_task(model, results))
    return results


if __name__ == "__main__":
    nightly()
