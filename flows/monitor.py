"""The hourly watch between nightly runs: ingest and enrich what arrived, let every champion
score it, check each model's recent window for drift against its champion's training
data, and judge the open releases (``flows/release_check.py``, also every 10 minutes). A
drifted model emits ``oceanml.drift.detected``, which starts the ``retrain`` deployment for
that model (``prefect.yaml``); the retrain's cool-down keeps an hour of events to one
retrain.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from core.params import read_params
from core.settings import get_settings
from flows.ended_runs import close_jobs_hook, close_orphaned_jobs
from flows.fleet import run_branches
from flows.nightly import raise_if_failed, scored_versions
from flows.score import score_step
from flows.timeouts import timed
from models.zoo import fleet
from tasks.drift import drift_task
from tasks.enrich import enrich_task
from tasks.ingest import ingest_task
from tasks.release_check import ReleaseOutcome, release_check_task
from tasks.results import BranchFailure, FleetResult, WatchResult
from tasks.score import distribution_task
from tasks.summary import drift_outcome, shared_rows


@flow(name="monitor-model", flow_run_name="{model}", log_prints=True)
def monitor_model(model: str) -> WatchResult:
    """One model's hour: its champion scores what arrived, then drift of the window."""
    return WatchResult(score_step(model), timed(drift_task)(model))


@flow(name="monitor", log_prints=True, on_cancellation=[close_jobs_hook],
      on_crashed=[close_jobs_hook])
def monitor(models: list[str] | None = None) -> FleetResult:
    """Ingest, enrich, score with the champions and check drift for ``models`` (default: the
    fleet in params.yaml), one ``monitor-model`` subflow per model, one at a time (scoring
    uses every core); a model that fails stops no other, and the monitor then ends Failed
    naming it, after its summary."""
    names = list(models or fleet(read_params(get_settings().project_dir.resolve())))
    close_orphaned_jobs()
    ingest = timed(ingest_task)()
    enrich = timed(enrich_task)(wait_for=[ingest])
    outcomes = run_branches(names, 1, monitor_model)
    if versions := scored_versions(outcomes):
        timed(distribution_task)(versions)
    results = FleetResult(ingest, enrich, outcomes)
    releases = timed(release_check_task)(names)
    text = monitor_summary(results, releases)
    create_markdown_artifact(text, key="monitor-summary",
                             description=f"monitor run of {', '.join(names)}")
    print(text)
    raise_if_failed(results, "models")
    return results


def monitor_summary(results: FleetResult, releases: list[ReleaseOutcome] = ()) -> str:
    """Markdown: what arrived, then per model its champion, what it scored and the verdict,
    and what the release check decided."""
    lines = ["# OceanML monitor", "", "| stage | outcome |", "|---|---|"]
    lines += [f"| {stage} | {text} |" for stage, text in shared_rows(results)]
    lines += ["", "| model | champion | scored | drift |", "|---|---|---|---|"]
    for model, outcome in results.models.items():
        if isinstance(outcome, BranchFailure):
            lines.append(f"| {model} | - | - | FAILED: {outcome.error} |")
            continue
        version = outcome.score.version
        lines.append(f"| {model} | {'v' + version if version else 'none'} | "
                     f"{outcome.score.scored if version else '-'} | "
                     f"{drift_outcome(outcome.drift)} |")
    if releases:
        lines += ["", "| release | candidate | decision |", "|---|---|---|"]
        lines += [f"| {r.release_id} ({r.model}) | v{r.candidate_version} {r.mode} | "
                  f"{r.action.upper()}: {r.reason} |" for r in releases]
    return "\n".join(lines)
