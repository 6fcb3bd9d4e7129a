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

from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import yaml
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from core import lineage
from core.db import (
    SENSOR_COLUMNS,
    Dataset,
    DriftRecord,
    Evaluation,
    Observation,
    PerformanceEstimate,
    Prediction,
    session_factory,
)
from core.logs import stage_logger
from core.registry import alias_version, run_link, tracking_uri
from core.registry import client as mlflow_client
from core.settings import get_settings
from tasks.drift_report import drift_figure, drift_table, log_drift_run
from tasks.drift_stats import (
    categorical_drift,
    mmd_permutation_test,
    numeric_drift,
    share_drift,
)
from tasks.performance import PerformancePolicy, performance_feature
from tasks.shards import IMAGE_FEATURES

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

Verdict = Literal["drift", "none", "insufficient"]
# features that drift the window on their own: the model's view, and its estimated accuracy
MODEL_VIEW = ("embedding", "predictions", "performance")


@dataclass(frozen=True)
class DriftThresholds:
    psi_threshold: float = 0.2
    ks_pvalue: float = 0.01
    share_threshold: float = 0.3
    min_samples: int = 50
    embedding_sample: int = 256  # images per side the embedding check reads at most
    embedding_pvalue: float = 0.01
    permutations: int = 200


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    the checks of the model's own view already made (:func:`prediction_features`,
    :func:`embedding_feature`)."""
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


def load_thresholds(params_file: Path) -> tuple[DriftThresholds, PerformancePolicy]:
    """The ``drift`` section of ``params.yaml`` and its ``performance`` part; an unknown key
    is refused by name and place."""
    section = dict(yaml.safe_load(params_file.read_text()).get("drift") or {})
    performance = section.pop("performance", None) or {}
    for where, values, cls in (("drift", section, DriftThresholds),
                               ("drift.performance", performance, PerformancePolicy)):
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{params_file}: {where}: unknown key(s) {', '.join(unknown)} "
                             f"(known: {', '.join(f.name for f in fields(cls))})")
    return DriftThresholds(**section), PerformancePolicy(**performance)


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


def prediction_features(sessions: sessionmaker, model: str, version: str, since: datetime,
                        t: DriftThresholds, history: int = 20_000) -> dict[str, dict[str, Any]]:
    """The champion's batch predictions on the window against its predictions on the
    observations before it (the latest ``history``): the class mix (``predictions``) or each
    target's values (``predictions:<target>``)."""
    query = (select(Prediction.label, Prediction.values, Observation.observed_at)
             .join(Observation, Observation.id == Prediction.observation_id)
             .where(Prediction.model_name == model, Prediction.model_version == version))
    with sessions() as session:
        current = session.execute(query.where(Observation.observed_at >= since)).all()
        before = session.execute(query.where(Observation.observed_at < since)
                                 .order_by(Observation.observed_at.desc()).limit(history)).all()
    if min(len(current), len(before)) < t.min_samples:
        return {}
    if before[0].label is not None:
        counts = pd.Series([r.label for r in before]).value_counts().to_dict()
        return {"predictions": categorical_drift(counts, pd.Series([r.label for r in current]),
                                                 t.ks_pvalue)}
    out = {}
    for target in before[0].values:  # values in [0, 1]: their mix over fixed fifths
        ref = value_bins([r.values[target] for r in before])
        out[f"predictions:{target}"] = categorical_drift(
            ref.value_counts().to_dict(), value_bins([r.values[target] for r in current]),
            t.ks_pvalue)
    return out


def value_bins(values: list[float]) -> pd.Series:
    """Regression outputs (in [0, 1]) as the fifth they fall in: a saturated output that
    moves in its fourth decimal is the same answer, not drift."""
    edges = np.linspace(0, 1, 6)[1:-1]
    return pd.Series(np.searchsorted(edges, np.asarray(values, dtype=float), side="right")
                     ).map(lambda b: f"{b / 5:.1f}-{(b + 1) / 5:.1f}")


def embedding_feature(sessions: sessionmaker, predictor: Any, lake: Any, reference_hashes:
                      list[str], window: pd.DataFrame, t: DriftThresholds
                      ) -> dict[str, dict[str, Any]]:
    """``embedding``: MMD between the champion backbone's embeddings of the reference images
    and of (a sample of) the window's images, with its permutation p-value."""
    with sessions() as session:
        ref_rows = session.execute(select(Observation.id, Observation.image_key)
                                   .where(Observation.content_hash.in_(reference_hashes),
                                          Observation.image_key.is_not(None))).all()
    cur = window.dropna(subset=["image_key"])
    cur = cur.sample(min(len(cur), t.embedding_sample), random_state=0)
    if min(len(ref_rows), len(cur)) < t.min_samples:
        return {}
    ref_emb = embed(predictor, lake, [(i, k, None) for i, k in ref_rows])
    cur_emb = embed(predictor, lake, [(i, k, None) for i, k in zip(cur["id"], cur["image_key"],
                                                                   strict=True)])
    mmd2, p, n_ref, n_cur = mmd_permutation_test(ref_emb, cur_emb, max_sample=t.embedding_sample,
                                                 permutations=t.permutations)
    return {"embedding": {"kind": "embedding", "mmd2": round(mmd2, 5), "pvalue": p,
                          "n_ref": n_ref, "n_cur": n_cur, "drifted": bool(p < t.embedding_pvalue)}}


def embed(predictor: Any, lake: Any, rows: list[tuple[int, str, Any]], batch_size: int = 64
          ) -> np.ndarray:
    """Backbone embeddings of the images ``rows`` name, prepared as scoring prepares them;
    an image that cannot be read is left out."""
    from torch.utils.data import DataLoader

    from tasks.score import LakeImages, collate

    loader = DataLoader(LakeImages(rows, lake, predictor.prepare), batch_size=batch_size,
                        collate_fn=collate)
    parts = [predictor.embeddings(images) for _, images, _ in loader if images is not None]
    return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)


def model_view(sessions: sessionmaker, mlc: MlflowClient, settings: Any, model: str,
               champion: ModelVersion | None, reference: Dataset, window: pd.DataFrame,
               since: datetime, t: DriftThresholds) -> dict[str, dict[str, Any]]:
    """The champion's view of the window: its predictions and its embeddings. Nothing
    before there is a champion."""
    from core.store import filesystem
    from models.predictor import load_predictor

    if champion is None or len(window) < t.min_samples:
        return {}
    version = str(champion.version)
    features = prediction_features(sessions, model, version, since, t)
    hashes = reference.reference_stats.get("embedding_sample") or []
    if hashes:
        try:
            predictor = load_predictor(mlc, model, version, device="cpu")
        except LookupError as exc:  # a version registered by other means: no input size
            stage_logger("drift").warning("drift of %s: no embedding check: %s", model, exc)
            return features
        features |= embedding_feature(sessions, predictor, filesystem(settings.lake_url, settings),
                                      hashes, window, t)
    return features


def window_probabilities(sessions: sessionmaker, model: str, version: str, classes: tuple,
                         since: datetime, until: datetime | None) -> np.ndarray:
    """The probabilities ``model`` v``version`` answered for the window's observations (its
    batch scoring), one row per observation, columns in ``classes`` order."""
    query = (select(Prediction.probabilities)
             .join(Observation, Observation.id == Prediction.observation_id)
             .where(Prediction.model_name == model, Prediction.model_version == version,
                    Observation.observed_at >= since, Prediction.probabilities.is_not(None)))
    if until is not None:
        query = query.where(Observation.observed_at < until)
    with sessions() as session:
        rows = session.scalars(query).all()
    return np.asarray([[p.get(c, 0.0) for c in classes] for p in rows], dtype=float
                      ).reshape(-1, len(classes))


def test_figures(sessions: sessionmaker, model: str, version: str) -> dict[str, float] | None:
    """The overall test metrics of ``model`` v``version``'s latest evaluation."""
    with sessions() as session:
        row = session.scalar(select(Evaluation).where(Evaluation.model_name == model,
                                                      Evaluation.model_version == version)
                             .order_by(Evaluation.id.desc()).limit(1))
    return None if row is None else dict(row.challenger_metrics.get("overall") or {})


def performance_view(sessions: sessionmaker, mlc: MlflowClient, model: str,
                     champion: ModelVersion | None, since: datetime, until: datetime | None,
                     t: DriftThresholds, policy: PerformancePolicy) -> dict[str, dict[str, Any]]:
    """``performance``: a classification champion's accuracy and macro-F1 on the window,
    estimated from the calibrated probabilities it answered (:mod:`tasks.performance`),
    against its own test figure. Nothing for a regressor or a window under ``min_samples``."""
    from models.predictor import version_spec

    if champion is None:
        return {}
    version = str(champion.version)
    try:
        spec = version_spec(mlc, model, version)
    except LookupError:
        return {}
    if spec.task != "classification":
        return {}
    probabilities = window_probabilities(sessions, model, version, spec.outputs, since, until)
    if len(probabilities) < t.min_samples:
        return {}
    feature = performance_feature(probabilities, test_figures(sessions, model, version), policy)
    return {"performance": {**feature, "version": version}}


def record_estimate(session: Any, mlc: MlflowClient, model: str, feature: dict[str, Any],
                    since: datetime, until: datetime, drift_record_id: int,
                    flow_run_id: str | None, run_id: str | None) -> PerformanceEstimate:
    """The estimate's row, and its points on the champion's MLflow run (a time series a
    person plots in the MLflow UI: one step per window end)."""
    row = PerformanceEstimate(
        model_name=model, model_version=feature["version"], drift_record_id=drift_record_id,
        window_since=since, window_until=until, n=feature["n"], metric=feature["metric"],
        estimated=feature["estimated"], test_value=feature["test"], drop=feature["drop"],
        drifted=feature["drifted"], flow_run_id=flow_run_id)
    session.add(row)
    if run_id:
        stamp = int(until.timestamp() * 1000)
        for metric, figures in feature["estimated"].items():
            for key, value in figures.items():
                name = f"monitor/estimated_{metric}" + ("" if key == "estimate" else f"_{key}")
                mlc.log_metric(run_id, name, float(value), timestamp=stamp,
                               step=int(until.timestamp()))
    return row


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
               now: datetime | None = None) -> dict[str, Any]:
    """Compare recent observations with the reference; emit ``oceanml.drift.detected``.

    :func:`detect_drift` does the work; this wrapper adds what needs a Prefect run: the
    per-feature table artifact, the event when drift is detected and the run log.
    """
    settings = get_settings()
    since = (now or datetime.now(UTC)) - timedelta(days=settings.drift_window_days)
    mlc = mlflow_client(settings)
    thresholds, performance = load_thresholds(settings.project_dir.resolve() / "params.yaml")
    report = detect_drift(session_factory(settings.db_url), mlc, model,
                          fallback_dataset_version, thresholds, since, lineage.flow_run_id(),
                          settings=settings, until=now, performance=performance)
    reference = report.reference_dataset_version
    if reference is None:
        return {"drifted": False, "verdict": "no_reference", "reason": report.reason,
                "n_current": 0}
    if report.features:
        pictures = (run_link(mlc, tracking_uri(settings), report.mlflow_run_id, "drift")
                    if report.mlflow_run_id else "none")
        create_table_artifact(drift_table(report.features), key=f"drift-{model}",
                              description=f"{model}: {report.verdict.upper()} vs dataset "
                                          f"{reference}: {report.reason}. Pictures: {pictures}")
    if report.drifted:
        emit_event(
            event="oceanml.drift.detected",
            resource={"prefect.resource.id": f"oceanml.model.{model}",
                      "prefect.resource.name": model},
            payload={"reference_dataset_version": reference, "reason": report.reason,
                     "share_drifted": report.share_drifted},
        )
    stage_logger("drift").info("drift of %s: %s (%s)", model, report.verdict, report.reason)
    return {"drifted": report.drifted, "verdict": report.verdict, "reason": report.reason,
            "n_current": report.n_current, "reference_dataset_version": reference,
            "share_drifted": report.share_drifted,
            "performance": report.features.get("performance")}
