"""The champion's own view of a drift window: its predictions (class mix, or each target's
values, against those before the window), its backbone's embeddings of the window's images
against the reference images' (MMD with a permutation test), and its accuracy estimated from
its calibrated probabilities (:mod:`tasks.performance`), recorded with the drift report."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from core.db import Dataset, Observation, Prediction
from core.logs import stage_logger
from core.params_schema import DriftThresholds, PerformancePolicy
from core.records import Evaluation, PerformanceEstimate
from models.confidence import ATC_TAG
from tasks.drift_stats import (
    categorical_drift,
    mmd_permutation_test,
)
from tasks.performance import performance_feature

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

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
    return answer_mix_drift(current, before, t, "predictions")


def online_features(sessions: sessionmaker, model: str, version: str, since: datetime,
                    until: datetime | None, t: DriftThresholds, history: int = 20_000
                    ) -> dict[str, dict[str, Any]]:
    """What applications sent the endpoint, as the champion answered it: its online answers
    in ``[since, until)`` against its online answers before (the latest ``history``), as
    ``online:predictions`` (or ``online:predictions:<target>``), a group apart from the
    batch predictions. A canary's or a shadow's answers are not the champion's view."""
    query = (select(Prediction.label, Prediction.values, Prediction.scored_at)
             .where(Prediction.model_name == model, Prediction.model_version == version,
                    Prediction.source == "online", Prediction.error.is_(None),
                    (Prediction.role == "champion") | Prediction.role.is_(None)))
    window = query.where(Prediction.scored_at >= since)
    if until is not None:
        window = window.where(Prediction.scored_at < until)
    with sessions() as session:
        current = session.execute(window).all()
        before = session.execute(query.where(Prediction.scored_at < since)
                                 .order_by(Prediction.scored_at.desc()).limit(history)).all()
    return answer_mix_drift(current, before, t, "online:predictions")


def answer_mix_drift(current: list[Any], before: list[Any], t: DriftThresholds, name: str
                     ) -> dict[str, dict[str, Any]]:
    """The mix of answers (class, or each target's fifth) of ``current`` against ``before``;
    nothing when either has fewer than ``min_samples``."""
    if min(len(current), len(before)) < t.min_samples:
        return {}
    if before[0].label is not None:
        counts = pd.Series([r.label for r in before]).value_counts().to_dict()
        return {name: categorical_drift(counts, pd.Series([r.label for r in current]),
                                        t.ks_pvalue)}
    out = {}
    for target in before[0].values:  # values in [0, 1]: their mix over fixed fifths
        ref = value_bins([r.values[target] for r in before])
        out[f"{name}:{target}"] = categorical_drift(
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
    feature = performance_feature(probabilities, test_figures(sessions, model, version), policy,
                                  stored_threshold(champion))
    return {"performance": {**feature, "version": version}}


def stored_threshold(champion: ModelVersion) -> float | None:
    """The version's accuracy-estimate threshold (its ``atc_threshold`` tag, set when it was
    trained); None for a version stored before there was one."""
    value = (champion.tags or {}).get(ATC_TAG)
    return None if value is None else float(value)


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


