"""How well a classification champion does on a window nobody has labelled yet, and, once
labels arrive, how well it really did.

Accuracy: average thresholded confidence (ATC, Garg et al., 2022). Each version carries a
threshold on the negative entropy of its answers, fit on held-out splits so that the share of
answers above it equals the accuracy there (:func:`models.confidence.atc_threshold`); a
window's estimated accuracy is the share of its answers above it. Under a storm the model's
calibrated confidence stays too high (the temperature was fit on calm days), but its answers
fall below the threshold about as often as they turn wrong: on the simulated storm the mean
confidence over-read the accuracy by 0.10 to 0.29, ATC by under 0.05.

Macro-F1, and accuracy for a version stored before it had a threshold: confidence-based
performance estimation (CBPE). With calibrated probabilities (the version's temperature), an
answer given with probability 0.8 is right 80% of the time, so the expected confusion matrix
of a window is, column by predicted class, the sum of the probability vectors the model gave
there; expected macro-F1 comes from it.

A bootstrap over the window's answers gives each interval. Neither can see a change in what
the labels mean for the same images (concept drift); both see the model growing unsure, which
covariate drift such as a storm causes, before anyone labels the storm.

Pure: probabilities and labels in, figures out. :func:`tasks.drift.detect_drift` reads the
window's stored answers and records the estimate; ``oceanml labels import`` adds the realized
figures next to it.
"""

from __future__ import annotations

import numpy as np

from core.params_schema import PerformancePolicy
from models.confidence import confidence_score
from tasks.gates import sample_metric

METRICS = ("accuracy", "macro_f1")


def expected_confusion(probabilities: np.ndarray) -> np.ndarray:
    """Rows true, columns predicted: each answer adds its probability vector to the column
    of the class it predicted."""
    p = np.asarray(probabilities, dtype=float)
    k = p.shape[1]
    onehot = np.eye(k)[p.argmax(axis=1)]  # (n, k): the predicted column
    return p.T @ onehot


def expected_metrics(probabilities: np.ndarray, threshold: float | None = None
                     ) -> dict[str, float]:
    """Estimated accuracy and macro-F1 of a window's answers: accuracy as the share of
    answers whose score is above the version's ATC ``threshold`` (the mean top-class
    probability without one); macro-F1 from the expected confusion matrix, averaged over the
    classes expected at least once in the window, as evaluation averages the classes present."""
    p = np.asarray(probabilities, dtype=float)
    if len(p) == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    cm = expected_confusion(p)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    f1 = 2 * tp / np.maximum(support + predicted, 1e-12)
    present = support >= 1.0
    accuracy = (p.max(axis=1).mean() if threshold is None
                else (confidence_score(p) > threshold).mean())
    return {"accuracy": float(accuracy),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0}


def methods(threshold: float | None) -> dict[str, str]:
    """How each metric is estimated, as the report and the record say it."""
    return {"accuracy": "cbpe" if threshold is None else "atc", "macro_f1": "cbpe"}


def estimate(probabilities: np.ndarray, policy: PerformancePolicy,
             threshold: float | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each metric's estimate with its two-sided ``policy.confidence`` bootstrap interval
    over the window's answers: ``{metric: {estimate, low, high}}``."""
    p = np.asarray(probabilities, dtype=float)
    point = expected_metrics(p, threshold)
    if len(p) < 2:
        return {m: {"estimate": point[m], "low": point[m], "high": point[m]} for m in METRICS}
    rng = np.random.default_rng(seed)
    draws = [expected_metrics(p[rng.integers(0, len(p), len(p))], threshold)
             for _ in range(policy.bootstrap_samples)]
    tail = (1.0 - policy.confidence) / 2
    return {m: {"estimate": point[m],
                "low": float(np.quantile([d[m] for d in draws], tail)),
                "high": float(np.quantile([d[m] for d in draws], 1.0 - tail))}
            for m in METRICS}


def realized(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 of the answers whose labels arrived, as evaluation defines them."""
    y, p = np.asarray(labels, dtype=int), np.asarray(predictions, dtype=int)
    return {m: sample_metric(m, y, p, n_classes) for m in METRICS}


def performance_feature(probabilities: np.ndarray, reference: dict[str, float] | None,
                        policy: PerformancePolicy, threshold: float | None = None
                        ) -> dict[str, object]:
    """The drift feature ``performance``: the estimate (ATC with the version's ``threshold``
    for accuracy), the champion's test figure it is compared with, and ``drifted`` when the
    estimate is below that figure by more than ``policy.drop``. Without a test figure it is
    recorded and drifts nothing."""
    figures = estimate(probabilities, policy, threshold)
    est = figures[policy.metric]
    test = (reference or {}).get(policy.metric)
    drifted = test is not None and est["estimate"] < test - policy.drop
    return {"kind": "performance", "metric": policy.metric, "n": int(len(probabilities)),
            "estimated": figures, "method": methods(threshold)[policy.metric],
            "test": test, "drop": policy.drop, "drifted": bool(drifted)}
