"""The nightly summary: what happened, in one page, printed and as a Prefect artifact."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from core.secrets import mask_url
from core.settings import get_settings
from tasks.results import BranchFailure, BranchResult, DriftOutcome, FleetResult
from tasks.score import ScoreResult


def _metrics(report: dict[str, Any] | None) -> str:
    """``accuracy 0.940, macro_f1 0.939`` (``mae``, ``rmse``, ``r2`` for regression)."""
    overall = (report or {}).get("overall", {})
    return ", ".join(f"{k} {v:.3f}" for k, v in overall.items() if isinstance(v, float)) or "-"


def _trivial(report: dict[str, Any] | None) -> str:
    """The trivial predictors' figures on the same split: ``majority accuracy 0.450, ...;
    prior ...`` (``-`` for an evaluation without them)."""
    trivial = (report or {}).get("trivial") or {}
    return "; ".join(f"{name} {_metrics(r)}" for name, r in trivial.items()) or "-"


def shared_rows(results: FleetResult) -> list[tuple[str, str]]:
    """(stage, outcome) of the stages every model shares: ingest and enrich."""
    ingest, enrich = results.ingest, results.enrich
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(ingest.reasons.items())) or "none"
    return [
        ("ingest", f"{ingest.ingested} new observations, {ingest.rejected} rejected "
                   f"({reasons}), {ingest.already_known} already known"
                   + (" - nothing new" if not ingest.ingested else "")),
        ("enrich", f"{enrich.enriched} enriched by {enrich.provider}/{enrich.model} "
                   f"({enrich.requests} requests, {enrich.cache_hits} cached, "
                   f"{enrich.failed} failed, {enrich.left} left"
                   + (f": {enrich.stopped}" if enrich.stopped else "") + ")"
                   + (f", {enrich.prompt_tokens + enrich.completion_tokens} tokens, "
                      f"~${enrich.cost:.4f}" if enrich.prompt_tokens else "")
                   + (f", {enrich.retry_after_capped} Retry-After waits cut to "
                      "OCEANML_LLM_MAX_RETRY_AFTER_S" if enrich.retry_after_capped else "")
                   + (" - nothing to do" if not enrich.enriched and not enrich.failed
                      else "")),
    ]


def branch_rows(model: str, branch: BranchResult) -> list[tuple[str, str]]:
    """(stage, outcome) for every stage of one model's branch, saying plainly when a stage
    had nothing to do."""
    dataset, train = branch.dataset, branch.train
    evaluation, promote = branch.evaluate, branch.promote
    return [
        ("dataset", f"`{dataset.version}` " + ("new version" if dataset.created
                                               else "unchanged: no new version")
                    + ", " + ", ".join(f"{split} {n}" for split, n in
                                       dataset.split_counts.items())),
        ("train", f"{model} v{train.model_version} "
                  + ("(already trained on this data and params: reused)" if train.reused
                     else "(new)")),
        ("evaluate", f"test {_metrics(evaluation.challenger)}; trivial predictors "
                     f"{_trivial(evaluation.challenger)}; champion "
                     + (f"v{evaluation.champion_version}" if evaluation.champion_version
                        else "none")
                     + (" (recorded earlier: reused)" if evaluation.reused else "")),
        ("promote", ("PROMOTED - " if promote.promoted else "not promoted - ")
                    + promote.reason
                    + ("" if promote.decided_now else " (no new decision)")),
        ("score", _score(branch.score)),
        ("drift", drift_outcome(branch.drift)),
    ]


def drift_outcome(drift: DriftOutcome) -> str:
    """DETECTED, none, or not enough recent data (no verdict), with the reason."""
    label = {"drift": "DETECTED", "none": "none", "insufficient": "NO VERDICT",
             "no_reference": "NO REFERENCE"}.get(drift.verdict, drift.verdict)
    return f"{label} - {drift.reason}" + performance_outcome(drift.performance)


def performance_outcome(feature: dict[str, Any] | None) -> str:
    """``; estimated accuracy 0.851 [0.803, 0.894] (test 0.870)`` for a classification
    champion's window, nothing otherwise."""
    if not feature:
        return ""
    e = feature["estimated"][feature["metric"]]
    test = f"test {feature['test']:.3f}" if feature.get("test") is not None else "no test figure"
    return (f"; estimated {feature['metric']} {e['estimate']:.3f} [{e['low']:.3f}, "
            f"{e['high']:.3f}] ({test}"
            + (f", more than {feature['drop']:.2f} below: PERFORMANCE DRIFT)"
               if feature["drifted"] else ")"))


FLEET_COLUMNS = ("model", "branch", "dataset", "version", "test", "trivial predictors",
                 "promotion", "scored", "drift")


def fleet_row(model: str, branch: BranchResult | BranchFailure) -> tuple[str, ...]:
    """One line per model: how its branch ended and what each stage left, in short."""
    if isinstance(branch, BranchFailure):
        return (model, f"FAILED: {branch.error}", *["-"] * (len(FLEET_COLUMNS) - 2))
    dataset, train, promote, score = branch.dataset, branch.train, branch.promote, branch.score
    return (
        model, "completed",
        f"`{dataset.version[:8]}` " + ("new" if dataset.created else "unchanged"),
        f"v{train.model_version} " + ("reused" if train.reused else "new"),
        _metrics(branch.evaluate.challenger),
        _trivial(branch.evaluate.challenger),
        ("PROMOTED" if promote.promoted else "kept")
        + (f" v{promote.champion_version}" if promote.champion_version else ""),
        str(score.scored) if score.version else "-",
        drift_outcome(branch.drift).split(" - ")[0],
    )


def _score(score: ScoreResult) -> str:
    """The score stage's line: what the champion scored, or why it scored nothing."""
    if not score.version:
        return f"nothing scored - {score.reason or 'no champion'}"
    failed = len(score.failed)
    return (f"v{score.version} scored {score.scored} observations"
            + (f" over {len(score.days)} days" if score.days else "")
            + (f", {failed} failed (see the run log)" if failed else "")
            + (f" - {score.reason}" if score.reason else ""))


def nightly_summary(results: FleetResult, where: dict[str, str]) -> str:
    """Markdown: the profile, the shared stages, one row per model, each model's stages in
    full (:func:`branch_rows`), and where to look further."""
    models, failed = results.models, results.failed()
    lines = [f"# OceanML nightly: {len(models)} models"
             + (f", {len(failed)} FAILED ({', '.join(failed)})" if failed else ""), "",
             f"Profile: {results.profile}", "", "| stage | outcome |", "|---|---|"]
    lines += [f"| {stage} | {text} |" for stage, text in shared_rows(results)]
    lines += ["", "| " + " | ".join(FLEET_COLUMNS) + " |", "|" + "---|" * len(FLEET_COLUMNS)]
    lines += ["| " + " | ".join(fleet_row(m, b)) + " |" for m, b in models.items()]
    for model, branch in models.items():
        if isinstance(branch, BranchResult):
            lines += ["", f"## `{model}`", "", "| stage | outcome |", "|---|---|"]
            lines += [f"| {stage} | {text} |" for stage, text in branch_rows(model, branch)]
    lines += ["", "Where to look:", ""] + [f"- {k}: {v}" for k, v in where.items()]
    return "\n".join(lines)


def where_to_look() -> dict[str, str]:
    settings = get_settings()
    return {
        "MLflow": f"`mlflow ui --backend-store-uri {mask_url(settings.mlflow_tracking_uri)}`",
        "Prefect UI": "`prefect server start`, then http://127.0.0.1:4200 (runs, logs, artifacts)",
        "metadata DB": f"`{mask_url(settings.db_url)}`",
        "rejects": "`oceanml rejects`",
    }


@task(name="summary", retries=2, retry_delay_seconds=5, timeout_seconds=300)
def summary_task(results: FleetResult) -> str:
    """Publish the summary as a markdown artifact and return it."""
    text = nightly_summary(results, where_to_look())
    create_markdown_artifact(text, key="nightly-summary",
                             description=f"nightly run of {', '.join(results.models)}")
    return text
