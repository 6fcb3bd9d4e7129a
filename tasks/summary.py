"""The nightly summary: what happened, in one page, printed and as a Prefect artifact."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from oceanml.settings import get_settings


def _metrics(report: dict[str, Any] | None) -> str:
    """``accuracy 0.940, macro_f1 0.939`` (``mae``, ``rmse``, ``r2`` for regression)."""
    overall = (report or {}).get("overall", {})
    return ", ".join(f"{k} {v:.3f}" for k, v in overall.items() if isinstance(v, float)) or "-"


def summary_rows(model: str, results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(stage, outcome) for every stage, saying plainly when a stage had nothing to do.

    ``results`` holds each stage task's return value under the stage's name, as the nightly
    flow collects them.
    """
    ingest, enrich = results["ingest"], results["enrich"]
    dataset, train = results["dataset"], results["train"]
    evaluation, drift, promote = results["evaluate"], results["drift"], results["promote"]
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(ingest["reasons"].items())) or "none"
    return [
        ("ingest", f"{ingest['ingested']} new observations, {ingest['rejected']} rejected "
                   f"({reasons}), {ingest['already_known']} already known"
                   + (" - nothing new" if not ingest["ingested"] else "")),
        ("enrich", f"{enrich['enriched']} enriched by {enrich['provider']}/{enrich['model']} "
                   f"({enrich['requests']} requests, {enrich['cache_hits']} cached, "
                   f"{enrich['failed']} failed, {enrich['left']} left"
                   + (f": {enrich['stopped']}" if enrich["stopped"] else "") + ")"
                   + (f", {enrich['prompt_tokens'] + enrich['completion_tokens']} tokens, "
                      f"~${enrich['cost']:.4f}" if enrich["prompt_tokens"] else "")
                   + (" - nothing to do" if not enrich["enriched"] and not enrich["failed"]
                      else "")),
        ("dataset", f"`{dataset['version']}` " + ("new version" if dataset["created"]
                                                  else "unchanged: no new version")
                    + f", splits {dataset['split_counts']}"),
        ("train", f"{model} v{train['model_version']} "
                  + ("(already trained on this data and params: reused)" if train["reused"]
                     else "(new)")),
        ("evaluate", f"test {_metrics(evaluation['challenger'])}; champion "
                     + (f"v{evaluation['champion_version']}" if evaluation["champion_version"]
                        else "none")
                     + (" (recorded earlier: reused)" if evaluation.get("reused") else "")),
        ("drift", ("DETECTED - " if drift["drifted"] else "none - ") + drift["reason"]),
        ("promote", ("PROMOTED - " if promote["promoted"] else "not promoted - ")
                    + promote["reason"]
                    + ("" if promote["decided_now"] else " (no new decision)")),
        *([("score", _score(results["score"]))] if "score" in results else []),
    ]


def _score(score: dict[str, Any]) -> str:
    """The score stage's line: what the champion scored, or why it scored nothing."""
    if not score.get("version"):
        return f"nothing scored - {score.get('reason') or 'no champion'}"
    failed = len(score.get("failed") or {})
    return (f"v{score['version']} scored {score.get('scored', 0)} observations"
            + (f" over {len(score['days'])} days" if score.get("days") else "")
            + (f", {failed} failed (see the run log)" if failed else "")
            + (f" - {score['reason']}" if score.get("reason") else ""))


def nightly_summary(model: str, results: dict[str, dict[str, Any]], where: dict[str, str]) -> str:
    """Markdown of every stage's outcome (:func:`summary_rows`) and where to look further."""
    rows = summary_rows(model, results)
    lines = [f"# OceanML nightly: `{model}`", "", "| stage | outcome |", "|---|---|"]
    lines += [f"| {stage} | {text} |" for stage, text in rows]
    lines += ["", "Where to look:", ""] + [f"- {k}: {v}" for k, v in where.items()]
    return "\n".join(lines)


def where_to_look() -> dict[str, str]:
    settings = get_settings()
    return {
        "MLflow": f"`mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}`",
        "Prefect UI": "`prefect server start`, then http://127.0.0.1:4200 (runs, logs, artifacts)",
        "metadata DB": f"`{settings.db_url}`",
        "rejects": "`oceanml rejects`",
    }


@task(name="summary")
def summary_task(model: str, results: dict[str, dict[str, Any]]) -> str:
    """Publish the summary as a markdown artifact and return it."""
    text = nightly_summary(model, results, where_to_look())
    create_markdown_artifact(text, key="nightly-summary", description=f"nightly run of {model}")
    return text
