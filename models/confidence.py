"""The threshold behind the label-free accuracy estimate (:mod:`tasks.performance`).

Average thresholded confidence (ATC, Garg et al., 2022): the negative entropy above which as
large a share of held-out answers lies as the share the model got right there. Under a shift
that makes the model unsure (a storm), the share of answers above it falls about as far as the
accuracy does, where the mean calibrated confidence falls much less. Training fits it on the
calibrated answers and stores it as the version's :data:`ATC_TAG` tag.

NumPy only: the drift stage and ``oceanml labels import`` read it without loading torch.
"""

from __future__ import annotations

import numpy as np

ATC_TAG = "atc_threshold"  # the model version tag that carries :func:`atc_threshold`


def confidence_score(probabilities: np.ndarray) -> np.ndarray:
    """Negative entropy of each answer's probabilities: 0 for a certain answer, lower the
    more the probability is spread (ATC's score; it reads the whole vector, not only the
    top class)."""
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-12, 1.0)
    return (p * np.log(p)).sum(axis=1)


def atc_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """The score above which the share of these held-out answers equals their accuracy:
    on data like these, the share of a window's answers above it estimates the window's
    accuracy. None when there is nothing to fit on."""
    probabilities, labels = np.asarray(probabilities, dtype=float), np.asarray(labels)
    if len(labels) == 0:
        return None
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    return float(np.quantile(confidence_score(probabilities), 1.0 - accuracy))
