"""The trivial predictors a model version must beat, fit on its own train split.

A model earns its place only by doing better than an answer that needs no model at all:

- classification: the **majority** class of the train split, always; and the class **prior**,
  a seeded draw from the train split's class frequencies for each test example (it scores
  like guessing with the base rates, which beats the majority class on macro-F1);
- regression: the train **mean** of each target.

Pure: labels in, predictions out. :func:`tasks.evaluate.evaluate_versions` scores them on the
test split like a model, so every report, overall, per class or target and per slice, has
their figures beside the model's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.zoo import ModelSpec

PRIOR_SEED = 0  # the same draws for the same split: the same decision on a re-run


def train_targets(spec: ModelSpec, raw_labels: Sequence[str]) -> np.ndarray:
    """Stored labels (a class name, or a JSON list of target values) as class indices or an
    (n, targets) array."""
    if spec.task == "classification":
        return np.asarray([spec.outputs.index(label) for label in raw_labels], dtype=np.int64)
    values = [json.loads(label) for label in raw_labels]
    return np.asarray(values, dtype=np.float64).reshape(-1, spec.num_outputs)


def split_targets(spec: ModelSpec, dataset_dir: Path, split: str = "train") -> np.ndarray:
    """The targets of one split of a dataset version (labels only, no image is read)."""
    from models.datamodule import read_split

    return train_targets(spec, read_split(dataset_dir, split, ["label"])["label"])


def trivial_predictions(spec: ModelSpec, train: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Each trivial predictor's answers for ``n`` test examples, fit on the ``train`` targets
    (from :func:`train_targets`). Refuses an empty train split: nothing to fit."""
    if len(train) == 0:
        raise ValueError(f"{spec.name}: the train split is empty, so no trivial predictor "
                         "can be fit to compare the model with")
    if spec.task == "classification":
        counts = np.bincount(train, minlength=spec.num_outputs)
        prior = counts / counts.sum()
        draws = np.random.default_rng(PRIOR_SEED).choice(spec.num_outputs, size=n, p=prior)
        return {"majority": np.full(n, int(counts.argmax()), dtype=np.int64), "prior": draws}
    return {"mean": np.tile(train.mean(axis=0), (n, 1))}
