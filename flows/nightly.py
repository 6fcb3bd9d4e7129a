"""The nightly lifecycle of the fleet: ingest -> enrich once, then one branch per model
(dataset -> train -> evaluate -> promote -> score -> drift), the branches side by side.

Each branch is a subflow run of its own (``model-branch``, named after the model), so the UI
shows every model's stages, logs and artifacts apart. A branch that fails does not stop the
others; the nightly then ends Failed, naming the failed models, with every branch's outcome
in its summary. In-process trainings take turns (see :mod:`flows.training`); with a GPU work
pool they all run at once on its workers.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import Flow, flow
from prefect.states import State

from core.params import load_params, profile_description, run_profile
from core.secrets import known_secrets, scrub
from core.settings import get_settings
from flows.score import score_step
from flows.training import train_step
from models.zoo import fleet
from tasks.dataset import build_dataset_task
from tasks.drift import drift_task
from tasks.enrich import enrich_task
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.promote import promote_task
from tasks.results import BranchFailure, BranchResult, FleetResult, WatchResult
from tasks.score import distribution_task
from tasks.summary import summary_task


@flow(name="model-branch", flow_run_name="{model}", log_prints=True)
def model_branch(model: str, profile: str, max_epochs: int | None = None,
                 backbone: str | None = None) -> BranchResult:
    """One model's night: its dataset, a training, the evaluation against its champion, the
    promotion decision, scoring by the champion it ends with, and drift of the recent window
    against that champion's training data."""
    dataset = build_dataset_task(model, profile=profile)
    train = train_step(model, dataset.version, max_epochs=max_epochs, backbone=backbone,
                       profile=profile)
    evaluation = evaluate_task(model, dataset.version, train.model_version)
    promote = promote_task(model, evaluation)
    scored = score_step(model)
    drift = drift_task(model, dataset.version)
    return BranchResult(dataset, train, evaluation, promote, scored, drift)


def run_branches(models: list[str], concurrency: int, branch: Flow = model_branch,
                 **kwargs: Any) -> dict[str, State]:
    """Every model's ``branch`` subflow, ``concurrency`` at a time (0: all); the final state
    of each (one failing never stops the others)."""
    workers = concurrency or len(models)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="branch") as pool:
        futures = {m: pool.submit(contextvars.copy_context().run, branch, m,
                                  return_state=True, **kwargs) for m in models}
        return {m: f.result() for m, f in futures.items()}


MAX_ERROR = 300


class FleetFailed(RuntimeError):
    """Some model branches failed; the others ran to the end (see the nightly summary)."""


Outcome = BranchResult | WatchResult | BranchFailure


def branch_outcome(state: State) -> Outcome:
    """A branch's results, or its error when it failed: its first line, cut, without a
    credential (an MLflow error quotes the tracking URL) and fit for a markdown table."""
    if state.is_completed():
        return state.result()
    message = (state.message or state.name).removeprefix("Flow run encountered an exception: ")
    line = scrub(message.strip().splitlines()[0] if message.strip() else state.name,
                 known_secrets(get_settings()))
    return BranchFailure(line[:MAX_ERROR].replace("|", "/"))  # one table cell of the summary


def scored_versions(outcomes: dict[str, Outcome]) -> dict[str, str]:
    """The champion version each model scored with, for the models that had one."""
    return {m: o.score.version for m, o in outcomes.items()
            if not isinstance(o, BranchFailure) and o.score.version}


def raise_if_failed(results: FleetResult, what: str) -> None:
    """:class:`FleetFailed` naming every model whose outcome is an error, if any is."""
    if failed := results.failed():
        raise FleetFailed(f"{len(failed)} of {len(results.models)} {what} failed: "
                          + "; ".join(f"{m}: {results.models[m].error}" for m in failed))


@flow(name="nightly", log_prints=True)
def nightly(models: list[str] | None = None, profile: str | None = None,
            max_epochs: int | None = None, backbone: str | None = None) -> FleetResult:
    """Run the night for ``models`` (default: ``fleet`` in params.yaml) under ``profile``
    (default: ``OCEANML_PROFILE``, else the zoo's defaults). Every stage is idempotent, so a
    re-run adds nothing."""
    settings = get_settings()
    profile = run_profile(profile)
    params = load_params(settings.project_dir.resolve(), profile)  # refuses a bad profile now
    names = list(models or fleet(params))
    ingest = ingest_task()
    enrich = enrich_task(wait_for=[ingest])
    states = run_branches(names, settings.fleet_concurrency, profile=profile,
                          max_epochs=max_epochs, backbone=backbone)
    branches = {m: branch_outcome(s) for m, s in states.items()}
    if champions := scored_versions(branches):
        distribution_task(champions)
    results = FleetResult(ingest, enrich, branches, profile_description(params, profile))
    print(summary_task(results))
    raise_if_failed(results, "model branches")  # after the summary: it shows the others
    return results


if __name__ == "__main__":
    nightly()
