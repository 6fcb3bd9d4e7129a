"""How well a classification champion does on a window nobody has labelled yet, and, once
labels arrive, how well it really did.

Confidence-based performance estimation: when a model's probabilities are calibrated (the
version's temperature, :mod:`models.calibration`), an answer given with probability 0.8 is
right 80% of the time, so the expected confusion matrix of a window is, column by predicted
class, the sum of the probability vectors the model gave there. Expected accuracy is the
mean top-class probability; expected macro-F1 comes from the expected matrix. A bootstrap
over the window's answers gives the interval. It cannot see a change in what the labels mean
for the same images (concept drift); it sees the model growing unsure, which covariate drift
such as a storm causes, before anyone labels the storm.

Pure: probabilities and labels in, figures out. :func:`tasks.drift.detect_drift` reads the
window's stored answers and records the estimate; ``oceanml labels import`` adds the realized
figures next to it.
"""

from __future__ import annotations

import numpy as np

from core.params_schema import PerformancePolicy
from tasks.gates import sample_metric

METRICS = ("accuracy", "macro_f1")


def expected_confusion(probabilities: np.ndarray) -> np.ndarray:
    """Rows true, columns predicted: each answer adds its probability vector to the column
    of the class it predicted."""
    p = np.asarray(probabilities, dtype=float)
    k = p.shape[1]
    onehot = np.eye(k)[p.argmax(axis=1)]  # (n, k): the predicted column
    return p.T @ onehot


def expected_metrics(probabilities: np.ndarray) -> dict[str, float]:
    """Expected accuracy and macro-F1 of a window's answers. Macro-F1 averages the classes
    expected at least once in the window, as evaluation averages the classes present."""
    p = np.asarray(probabilities, dtype=float)
    if len(p) == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    cm = expected_confusion(p)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    f1 = 2 * tp / np.maximum(support + predicted, 1e-12)
    present = support >= 1.0
    return {"accuracy": float(p.max(axis=1).mean()),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0}


def estimate(probabilities: np.ndarray, policy: PerformancePolicy, seed: int = 0
             ) -> dict[str, dict[str, float]]:
    """Each metric's estimate with its two-sided ``policy.confidence`` bootstrap interval
    over the window's answers: ``{metric: {estimate, low, high}}``."""
    p = np.asarray(probabilities, dtype=float)
    point = expected_metrics(p)
    if len(p) < 2:
        return {m: {"estimate": point[m], "low": point[m], "high": point[m]} for m in METRICS}
    rng = np.random.default_rng(seed)
    draws = [expected_metrics(p[rng.integers(0, len(p), len(p))])
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
                        policy: PerformancePolicy) -> dict[str, object]:
    """The drift feature ``performance``: the estimate, the champion's test figure it is
    compared with, and ``drifted`` when the estimate is below that figure by more than
    ``policy.drop``. Without a test figure it is recorded and drifts nothing."""
    figures = estimate(probabilities, policy)
    est = figures[policy.metric]
    test = (reference or {}).get(policy.metric)
    drifted = test is not None and est["estimate"] < test - policy.drop
    return {"kind": "performance", "metric": policy.metric, "n": int(len(probabilities)),
            "estimated": figures, "test": test, "drop": policy.drop,
            "drifted": bool(drifted)}
