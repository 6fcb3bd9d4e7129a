"""The nightly lifecycle of the fleet: ingest -> enrich once, then one branch per model
(dataset -> train -> evaluate -> promote -> score -> drift), the branches side by side.

Each branch is a subflow run of its own (``model-branch``, named after the model), so the UI
shows every model's stages, logs and artifacts apart. A branch that fails does not stop the
others; the nightly then ends Failed, naming the failed models, with every branch's outcome
in its summary. Each branch runs in a process of its own (:mod:`flows.fleet`), so its
tasks' timeouts and its deadline end what they bound. In-process trainings take turns (see
:mod:`flows.training`); with a GPU work pool they all run at once on its workers.
"""

from __future__ import annotations

from prefect import flow

from core.params import load_params, profile_description, run_profile
from core.settings import get_settings
from flows.ended_runs import close_jobs_hook, close_orphaned_jobs
from flows.fleet import BranchFailure, Outcome, run_branches
from flows.score import score_step
from flows.timeouts import timed
from flows.training import train_step
from models.zoo import fleet
from tasks.dataset import build_dataset_task
from tasks.drift import drift_task
from tasks.enrich import enrich_task
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.promote import promote_task
from tasks.results import BranchResult, FleetResult
from tasks.score import distribution_task
from tasks.summary import summary_task


@flow(name="model-branch", flow_run_name="{model}", log_prints=True)
def model_branch(model: str, profile: str, max_epochs: int | None = None,
                 backbone: str | None = None) -> BranchResult:
    """One model's night: its dataset, a training, the evaluation against its champion, the
    promotion decision, scoring by the champion it ends with, and drift of the recent window
    against that champion's training data."""
    dataset = timed(build_dataset_task)(model, profile=profile)
    train = train_step(model, dataset.version, max_epochs=max_epochs, backbone=backbone,
                       profile=profile)
    evaluation = timed(evaluate_task)(model, dataset.version, train.model_version)
    promote = timed(promote_task)(model, evaluation)
    scored = score_step(model)
    drift = timed(drift_task)(model, dataset.version)
    return BranchResult(dataset, train, evaluation, promote, scored, drift)


class FleetFailed(RuntimeError):
    """Some model branches failed; the others ran to the end (see the nightly summary)."""


def scored_versions(outcomes: dict[str, Outcome]) -> dict[str, str]:
    """The champion version each model scored with, for the models that had one."""
    return {m: o.score.version for m, o in outcomes.items()
            if not isinstance(o, BranchFailure) and o.score.version}


def raise_if_failed(results: FleetResult, what: str) -> None:
    """:class:`FleetFailed` naming every model whose outcome is an error, if any is."""
    if failed := results.failed():
        raise FleetFailed(f"{len(failed)} of {len(results.models)} {what} failed: "
                          + "; ".join(f"{m}: {results.models[m].error}" for m in failed))


@flow(name="nightly", log_prints=True, on_cancellation=[close_jobs_hook],
      on_crashed=[close_jobs_hook])
def nightly(models: list[str] | None = None, profile: str | None = None,
            max_epochs: int | None = None, backbone: str | None = None) -> FleetResult:
    """Run the night for ``models`` (default: ``fleet`` in params.yaml) under ``profile``
    (default: ``OCEANML_PROFILE``, else the zoo's defaults). Every stage is idempotent, so a
    re-run adds nothing."""
    settings = get_settings()
    close_orphaned_jobs()
    profile = run_profile(profile)
    params = load_params(settings.project_dir.resolve(), profile)  # refuses a bad profile now
    names = list(models or fleet(params))
    ingest = timed(ingest_task)()
    enrich = timed(enrich_task)(wait_for=[ingest])
    branches = run_branches(names, settings.fleet_concurrency, model_branch, profile=profile,
                            max_epochs=max_epochs, backbone=backbone)
    if champions := scored_versions(branches):
        timed(distribution_task)(champions)
    results = FleetResult(ingest, enrich, branches, profile_description(params, profile))
    print(timed(summary_task)(results))
    raise_if_failed(results, "model branches")  # after the summary: it shows the others
    return results


if __name__ == "__main__":
    nightly()
