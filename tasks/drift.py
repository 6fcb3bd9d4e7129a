"""Drift: the recent window against the champion's training data.

Features: sensor readings and image statistics (PSI and KS against the reference sample the
dataset stored), the device mix (chi-square), the share of each LLM tag (two-proportion
test), the champion's own predictions (class mix, or each target's values, in the window
against those before it) and the images themselves: the champion backbone's embeddings of
the window's images against the reference images', by MMD with a permutation test on a
bounded sample (:mod:`tasks.drift_stats`). The window drifts when enough features do, or when
the model's own view (its embeddings or its predictions) moved. Too few recent observations
is its own verdict, ``insufficient``, never "no drift".

:func:`compute_drift` is pure; :func:`detect_drift` is the stage's logic (find the reference,
gather the window, compare, record); :func:`drift_task` wraps it with what needs a Prefect run
(the table artifact, the event and the run log).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from core import lineage
from core.database import session_factory
from core.db import SENSOR_COLUMNS, Dataset, Observation
from core.logs import stage_logger
from core.params import load_file
from core.params_schema import DriftThresholds, PerformancePolicy
from core.records import DriftRecord
from core.registry import alias_version, run_link, tracking_uri
from core.registry import client as mlflow_client
from core.settings import get_settings
from tasks.drift_model_view import (
    model_view,
    online_features,
    performance_view,
    record_estimate,
)
from tasks.drift_report import drift_figure, drift_table, log_drift_run
from tasks.drift_stats import (
    categorical_drift,
    numeric_drift,
    share_drift,
)
from tasks.results import DriftOutcome
from tasks.shards import IMAGE_FEATURES

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

Verdict = Literal["drift", "none", "insufficient"]
# features that drift the window on their own: the model's view, and its estimated accuracy
MODEL_VIEW = ("embedding", "predictions", "performance", "online")
DRIFT_EVENT = "oceanml.drift.detected"


@dataclass
class DriftReport:
    drifted: bool
    n_current: int
    share_drifted: float
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""
    reference_dataset_version: str | None = None  # None: there was nothing to compare with
    verdict: Verdict = "none"
    mlflow_run_id: str | None = None  # the check's run in MLflow (table and picture)


@dataclass
class Window:
    """What the recent window holds: one row per observation, and the model's view of it."""

    observations: pd.DataFrame
    model_features: dict[str, dict[str, Any]] = field(default_factory=dict)


def tag_features(reference: dict[str, Any], current: pd.DataFrame, t: DriftThresholds
                 ) -> dict[str, dict[str, Any]]:
    """``tag:<name>``: the share of enriched observations carrying each LLM tag."""
    ref_counts = reference.get("categorical", {}).get("llm_tags") or {}
    if not ref_counts or "llm_tags" not in current:
        return {}
    enriched = current["llm_tags"].dropna()
    if len(enriched) < t.min_samples:
        return {}
    hits = enriched.explode().dropna().value_counts()  # enrichment keeps a tag once per row
    # shares of all rows on both sides: the reference counts a row not enriched as one
    # without tags (its manifest cannot tell them apart), so the window does the same
    return {f"tag:{tag}": share_drift(ref_counts.get(tag, 0), reference["n"],
                                      int(hits.get(tag, 0)), len(current), t.ks_pvalue)
            for tag in sorted(set(ref_counts) | set(hits.index))}


def compute_drift(reference: dict[str, Any], current: pd.DataFrame, thresholds: DriftThresholds,
                  model_features: dict[str, dict[str, Any]] | None = None) -> DriftReport:
    """Per-feature drift of ``current`` (one row per observation) against ``reference``, plus
    the checks of the model's own view already made (:mod:`tasks.drift_model_view`)."""
    n = len(current)
    if n < thresholds.min_samples:
        return DriftReport(False, n, 0.0, reason=f"not enough recent data: {n} observations "
                           f"in the window (< {thresholds.min_samples}); no verdict",
                           verdict="insufficient")
    features: dict[str, dict[str, Any]] = {}
    for name, ref in reference.get("numeric", {}).items():
        if name in current:
            values = current[name].dropna().to_numpy(dtype=float)
            if len(values) >= thresholds.min_samples:
                features[name] = numeric_drift(ref, values, thresholds.ks_pvalue,
                                               thresholds.psi_threshold)
    device_counts = reference.get("categorical", {}).get("device_type")
    if device_counts and "device_type" in current:
        features["device_type"] = categorical_drift(device_counts, current["device_type"],
                                                    thresholds.ks_pvalue)
    features |= tag_features(reference, current, thresholds)
    features |= model_features or {}
    drifted = [name for name, f in features.items() if f["drifted"]]
    share = len(drifted) / len(features) if features else 0.0
    model_view = [name for name in drifted if name.split(":")[0] in MODEL_VIEW]
    verdict = share >= thresholds.share_threshold or bool(model_view)
    reason = (f"{len(drifted)}/{len(features)} features drifted ({', '.join(drifted) or 'none'}); "
              f"bar is {thresholds.share_threshold:.0%}"
              + (f", and the model's view moved ({', '.join(model_view)})" if model_view else ""))
    return DriftReport(verdict, n, round(share, 4), features, reason,
                       verdict="drift" if verdict else "none")


def load_thresholds(project_dir: Path) -> tuple[DriftThresholds, PerformancePolicy]:
    """The ``drift`` section of the project's ``params.yaml`` and its ``performance`` part,
    checked with the rest of the file."""
    drift = load_file(project_dir).drift
    return drift.thresholds(), drift.performance


def recent_observations(sessions: sessionmaker, since: datetime) -> pd.DataFrame:
    """One row per observation since ``since``: id, image key, readings, image statistics,
    device type and LLM tags (None when not enriched)."""
    with sessions() as session:
        rows = session.scalars(select(Observation).where(Observation.observed_at >= since)
                               .order_by(Observation.id)).all()
    return pd.DataFrame.from_records([
        {"id": o.id, "image_key": o.image_key, "device_type": o.device_type,
         "llm_tags": o.llm_tags,
         **{name: getattr(o, name) for name in SENSOR_COLUMNS},
         **{f"image_{f}": (o.image_stats or {}).get(f) for f in IMAGE_FEATURES}}
        for o in rows
    ], columns=["id", "image_key", "device_type", "llm_tags", *SENSOR_COLUMNS,
                *(f"image_{f}" for f in IMAGE_FEATURES)])


def reference_dataset(sessions: sessionmaker, champion: ModelVersion | None, model: str,
                      fallback_version: str | None) -> Dataset | None:
    """The champion's training dataset; before any champion, the given fallback version."""
    version = champion.tags.get("dataset_version") if champion else fallback_version
    with sessions() as session:
        return session.scalar(select(Dataset).where(Dataset.name == model,
                                                    Dataset.version == version))


def detect_drift(
    sessions: sessionmaker,
    mlc: MlflowClient,
    model: str,
    fallback_dataset_version: str | None,
    thresholds: DriftThresholds,
    since: datetime,
    flow_run_id: str | None,
    settings: Any = None,
    *,
    until: datetime | None = None,
    performance: PerformancePolicy | None = None,
) -> DriftReport:
    """Compare the window since ``since`` with the reference dataset; record the check.

    Every check with a reference adds a ``DriftRecord`` with its verdict (a time series of
    checks: two checks of the same data are two rows); without a reference (no champion and
    no stored fallback dataset) nothing is recorded and the report says so, with
    ``reference_dataset_version`` None. The model's view (predictions, embeddings) is
    checked when ``settings`` say where the lake is. A classification champion's accuracy on
    the window is estimated from the probabilities it answered there (``performance``,
    judged by ``performance``'s drop) and recorded in ``performance_estimates`` for the
    window ``[since, until)`` (until: now).
    """
    champion = alias_version(mlc, model)  # read once: the reference and the model's view
    reference = reference_dataset(sessions, champion, model, fallback_dataset_version)
    if reference is None:
        return DriftReport(False, 0, 0.0, reason="no reference dataset yet")
    window = recent_observations(sessions, since)
    extra = (model_view(sessions, mlc, settings, model, champion, reference, window, since,
                        thresholds) if settings is not None else {})
    if champion is not None:  # what applications sent the endpoint, as the champion saw it
        extra |= online_features(sessions, model, str(champion.version), since, until,
                                 thresholds)
    if len(window) >= thresholds.min_samples:
        extra |= performance_view(sessions, mlc, model, champion, since, until, thresholds,
                                  performance or PerformancePolicy())
    report = replace(compute_drift(reference.reference_stats, window, thresholds, extra),
                     reference_dataset_version=reference.version)
    if settings is not None and report.features:
        figure = drift_figure(reference.reference_stats, window, report.features)
        report.mlflow_run_id = log_drift_run(mlc, settings.mlflow_artifact_uri, model, report,
                                             figure, drift_table(report.features))
    with sessions() as session:
        record = DriftRecord(model_name=model, reference_dataset_version=reference.version,
                             n_current=report.n_current, drifted=report.drifted,
                             verdict=report.verdict, features=report.features,
                             flow_run_id=flow_run_id)
        session.add(record)
        session.flush()
        if "performance" in report.features:
            record_estimate(session, mlc, model, report.features["performance"], since,
                            until or datetime.now(UTC), record.id, flow_run_id,
                            champion.run_id if champion is not None else None)
        session.commit()
    return report


@task(name="drift", retries=1, retry_delay_seconds=10, timeout_seconds=3600)
def drift_task(model: str, fallback_dataset_version: str | None = None,
               now: datetime | None = None) -> DriftOutcome:
    """Compare recent observations with the reference; emit ``oceanml.drift.detected``.

    :func:`detect_drift` does the work; this wrapper adds what needs a Prefect run: the
    per-feature table artifact, the event when drift is detected and the run log.
    """
    settings = get_settings()
    since = (now or datetime.now(UTC)) - timedelta(days=settings.drift_window_days)
    mlc = mlflow_client(settings)
    thresholds, performance = load_thresholds(settings.project_dir.resolve())
    report = detect_drift(session_factory(settings.db_url), mlc, model,
                          fallback_dataset_version, thresholds, since, lineage.flow_run_id(),
                          settings=settings, until=now, performance=performance)
    reference = report.reference_dataset_version
    if reference is None:
        return DriftOutcome(False, "no_reference", report.reason)
    if report.features:
        pictures = (run_link(mlc, tracking_uri(settings), report.mlflow_run_id, "drift")
                    if report.mlflow_run_id else "none")
        create_table_artifact(drift_table(report.features), key=f"drift-{model}",
                              description=f"{model}: {report.verdict.upper()} vs dataset "
                                          f"{reference}: {report.reason}. Pictures: {pictures}")
    if report.drifted:
        emit_drift_event(model, reference, report.reason, report.share_drifted)
    stage_logger("drift").info("drift of %s: %s (%s)", model, report.verdict, report.reason)
    return DriftOutcome(report.drifted, report.verdict, report.reason, report.n_current,
                        reference, report.share_drifted, report.features.get("performance"))


def emit_drift_event(model: str, reference: str | None, reason: str, share: float) -> None:
    """``oceanml.drift.detected`` for ``model``: it starts the retrain deployment, and a
    message where notifications are set."""
    emit_event(event=DRIFT_EVENT,
               resource={"prefect.resource.id": f"oceanml.model.{model}",
                         "prefect.resource.name": model},
               payload={"reference_dataset_version": reference, "reason": reason,
                        "share_drifted": share})
