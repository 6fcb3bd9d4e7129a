"""The hourly watch between nightly runs: ingest and enrich what arrived, let every champion
score it, and check each model's recent window for drift against its champion's training
data. A drifted model emits ``oceanml.drift.detected``, which starts the ``retrain``
deployment for that model (``prefect.yaml``); the retrain's cool-down keeps an hour of
events to one retrain.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.score import score_step
from oceanml.params import fleet, read_params
from oceanml.settings import get_settings
from tasks.drift import drift_task
from tasks.enrich import enrich_task
from tasks.ingest import ingest_task
from tasks.score import distribution_task
from tasks.summary import drift_outcome, shared_rows


@flow(name="monitor", log_prints=True)
def monitor(models: list[str] | None = None) -> dict[str, Any]:
    """Ingest, enrich, score with the champions and check drift for ``models`` (default: the
    fleet in params.yaml)."""
    names = list(models or fleet(read_params(get_settings().project_dir.resolve())))
    ingest = ingest_task()
    enrich = enrich_task(wait_for=[ingest])
    scored = {m: score_step(m) for m in names}
    versions = {m: s["version"] for m, s in scored.items() if s.get("version")}
    if versions:
        distribution_task(versions)
    drift = {m: drift_task(m) for m in names}
    results = {"ingest": ingest, "enrich": enrich, "score": scored, "drift": drift}
    text = monitor_summary(results)
    create_markdown_artifact(text, key="monitor-summary",
                             description=f"monitor run of {', '.join(names)}")
    print(text)
    return results


def monitor_summary(results: dict[str, Any]) -> str:
    """Markdown: what arrived, then per model its champion, what it scored and the verdict."""
    lines = ["# OceanML monitor", "", "| stage | outcome |", "|---|---|"]
    lines += [f"| {stage} | {text} |" for stage, text in shared_rows(results)]
    lines += ["", "| model | champion | scored | drift |", "|---|---|---|---|"]
    for model, drift in results["drift"].items():
        score = results["score"][model]
        version = score.get("version")
        lines.append(f"| {model} | {'v' + version if version else 'none'} | "
                     f"{score.get('scored', 0) if version else '-'} | {drift_outcome(drift)} |")
    return "\n".join(lines)
