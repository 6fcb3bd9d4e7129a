"""Drift: recent observations against the champion's training data.

Reference statistics are stored with each dataset version (a value sample, quantile edges and
category counts). Continuous features get a two-sample KS test and PSI over the reference
quantile bins; categorical ones a chi-square test. A feature drifts when PSI passes its bar,
or KS is significant *and* large enough to matter (on thousands of rows any difference is
"significant"); the report drifts when enough features do.

:func:`compute_drift` is pure; :func:`detect_drift` is the stage's logic (find the reference,
compare, record); :func:`drift_task` wraps it with what needs a Prefect run (the table
artifact, the event and the run log).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from scipy import stats
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from oceanml import lineage
from oceanml.db import SENSOR_COLUMNS, Dataset, DriftRecord, Observation, session_factory
from oceanml.logs import stage_logger
from oceanml.registry import alias_version
from oceanml.registry import client as mlflow_client
from oceanml.settings import get_settings
from tasks.shards import IMAGE_FEATURES

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

EPS = 1e-4
KS_MIN_EFFECT = 0.1


@dataclass(frozen=True)
class DriftThresholds:
    psi_threshold: float = 0.2
    ks_pvalue: float = 0.01
    share_threshold: float = 0.3
    min_samples: int = 50


@dataclass
class DriftReport:
    drifted: bool
    n_current: int
    share_drifted: float
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""
    reference_dataset_version: str | None = None  # None: there was nothing to compare with

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def psi(edges: list[float], reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index over the reference's quantile bins (open-ended outer bins)."""
    inner = np.asarray(edges[1:-1], dtype=float)
    ref = np.bincount(np.searchsorted(inner, reference, side="right"), minlength=len(inner) + 1)
    cur = np.bincount(np.searchsorted(inner, current, side="right"), minlength=len(inner) + 1)
    ref_p = np.clip(ref / max(ref.sum(), 1), EPS, None)
    cur_p = np.clip(cur / max(cur.sum(), 1), EPS, None)
    return float(np.sum((cur_p - ref_p) * np.log(cur_p / ref_p)))


def numeric_drift(ref: dict[str, Any], current: np.ndarray, t: DriftThresholds) -> dict[str, Any]:
    sample = np.asarray(ref["sample"], dtype=float)
    ks = stats.ks_2samp(sample, current)
    value = psi(ref["edges"], sample, current)
    drifted = value > t.psi_threshold or (ks.pvalue < t.ks_pvalue and ks.statistic > KS_MIN_EFFECT)
    return {"kind": "numeric", "psi": round(value, 4), "ks_stat": round(float(ks.statistic), 4),
            "ks_pvalue": float(ks.pvalue), "ref_mean": round(ref["mean"], 4),
            "cur_mean": round(float(current.mean()), 4), "drifted": bool(drifted)}


def categorical_drift(ref_counts: dict[str, int], current: pd.Series, t: DriftThresholds) -> dict:
    categories = sorted(set(ref_counts) | set(current.unique()))
    ref = np.array([ref_counts.get(c, 0) for c in categories], dtype=float)
    cur = current.value_counts().reindex(categories, fill_value=0).to_numpy(dtype=float)
    expected = np.clip(ref / ref.sum(), EPS, None)
    expected = expected / expected.sum() * cur.sum()
    chi = stats.chisquare(cur, expected)
    return {"kind": "categorical", "chi2": round(float(chi.statistic), 3),
            "pvalue": float(chi.pvalue), "drifted": bool(chi.pvalue < t.ks_pvalue)}


def compute_drift(
    reference: dict[str, Any], current: pd.DataFrame, thresholds: DriftThresholds
) -> DriftReport:
    """Per-feature drift of ``current`` (one row per observation) against ``reference``."""
    n = len(current)
    if n < thresholds.min_samples:
        return DriftReport(False, n, 0.0, reason=f"only {n} recent observations "
                           f"(< {thresholds.min_samples}); no verdict")
    features: dict[str, dict[str, Any]] = {}
    for name, ref in reference.get("numeric", {}).items():
        if name in current:
            values = current[name].dropna().to_numpy(dtype=float)
            if len(values) >= thresholds.min_samples:
                features[name] = numeric_drift(ref, values, thresholds)
    device_counts = reference.get("categorical", {}).get("device_type")
    if device_counts and "device_type" in current:
        features["device_type"] = categorical_drift(device_counts, current["device_type"], thresholds)
    drifted = [name for name, f in features.items() if f["drifted"]]
    share = len(drifted) / len(features) if features else 0.0
    verdict = share >= thresholds.share_threshold
    reason = (f"{len(drifted)}/{len(features)} features drifted ({', '.join(drifted) or 'none'}); "
              f"bar is {thresholds.share_threshold:.0%}")
    return DriftReport(verdict, n, round(share, 4), features, reason)


def load_thresholds(params_file: Path) -> DriftThresholds:
    return DriftThresholds(**(yaml.safe_load(params_file.read_text()).get("drift") or {}))


def recent_observations(sessions: sessionmaker, since: datetime) -> pd.DataFrame:
    """One row per observation since ``since``: readings, image statistics, device type."""
    with sessions() as session:
        rows = session.scalars(select(Observation).where(Observation.observed_at >= since)).all()
    return pd.DataFrame.from_records([
        {"device_type": o.device_type,
         **{name: getattr(o, name) for name in SENSOR_COLUMNS},
         **{f"image_{f}": (o.image_stats or {}).get(f) for f in IMAGE_FEATURES}}
        for o in rows
    ])


def reference_dataset(sessions: sessionmaker, mlc: MlflowClient, model: str,
                      fallback_version: str | None) -> Dataset | None:
    """The champion's training dataset; before any champion, the given fallback version."""
    champion = alias_version(mlc, model)
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
) -> DriftReport:
    """Compare the observations since ``since`` with the reference dataset; record the check.

    Every check with a reference adds a ``DriftRecord`` (a time series of checks: two checks
    of the same data are two rows); without a reference (no champion and no stored fallback
    dataset) nothing is recorded and the report says so, with ``reference_dataset_version``
    None.
    """
    reference = reference_dataset(sessions, mlc, model, fallback_dataset_version)
    if reference is None:
        return DriftReport(False, 0, 0.0, reason="no reference dataset yet")
    report = compute_drift(reference.reference_stats, recent_observations(sessions, since),
                           thresholds)
    with sessions() as session:
        session.add(DriftRecord(model_name=model, reference_dataset_version=reference.version,
                                n_current=report.n_current, drifted=report.drifted,
                                features=report.features, flow_run_id=flow_run_id))
        session.commit()
    return replace(report, reference_dataset_version=reference.version)


def drift_table(report: DriftReport) -> list[dict[str, Any]]:
    return [{"feature": name, **{k: v for k, v in f.items() if k != "kind"}}
            for name, f in report.features.items()]


@task(name="drift", retries=1, retry_delay_seconds=10)
def drift_task(model: str, fallback_dataset_version: str | None = None,
               now: datetime | None = None) -> dict[str, Any]:
    """Compare recent observations with the reference; emit ``oceanml.drift.detected``.

    :func:`detect_drift` does the work; this wrapper adds what needs a Prefect run: the
    per-feature table artifact, the event when drift is detected and the run log.
    """
    settings = get_settings()
    since = (now or datetime.now(UTC)) - timedelta(days=settings.drift_window_days)
    report = detect_drift(session_factory(settings.db_url), mlflow_client(settings), model,
                          fallback_dataset_version,
                          load_thresholds(settings.project_dir.resolve() / "params.yaml"),
                          since, lineage.flow_run_id())
    reference = report.reference_dataset_version
    if reference is None:
        return {"drifted": False, "reason": report.reason, "n_current": 0}
    if report.features:
        create_table_artifact(drift_table(report), key=f"drift-{model}",
                              description=f"drift vs dataset {reference}: {report.reason}")
    if report.drifted:
        emit_event(
            event="oceanml.drift.detected",
            resource={"prefect.resource.id": f"oceanml.model.{model}",
                      "prefect.resource.name": model},
            payload={"reference_dataset_version": reference, "reason": report.reason,
                     "share_drifted": report.share_drifted},
        )
    stage_logger("drift").info("drift: %s (%s)", "DETECTED" if report.drifted else "none",
                               report.reason)
    return {"drifted": report.drifted, "reason": report.reason, "n_current": report.n_current,
            "reference_dataset_version": reference, "share_drifted": report.share_drifted}
