"""Evaluation metrics, pure: labels and predictions in, a report out.

:func:`classification_report` and :func:`regression_report` give ``overall``, ``per_class``
or ``per_target``, ``slices`` (each at least ``MIN_SLICE`` examples), and ``confusion`` for
classification. The metrics are torchmetrics' functional ones (the library the training
loop logs with), so evaluation and training agree on what precision, F1 or R2 mean. One
definition is ours on purpose: macro-F1, see :func:`classification_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_SLICE = 5


def _class_table(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Confusion matrix (rows true, columns predicted), accuracy and per-class precision,
    recall and F1, by torchmetrics.

    A class never predicted has precision 0, one never true recall 0 (torchmetrics'
    ``zero_division=0``): an undefined ratio must not read as a good one. An empty input
    (torchmetrics refuses it) gives zeros everywhere, accuracy included, so an empty split
    scores below any floor instead of failing the stage.
    """
    if len(y_true) == 0:
        return {"confusion": np.zeros((n, n), dtype=np.int64), "accuracy": np.float32(0.0),
                **{k: np.zeros(n, dtype=np.float32) for k in ("precision", "recall", "f1")}}
    import torch
    from torchmetrics.functional import classification as tmc

    preds = torch.as_tensor(np.asarray(y_pred, dtype=np.int64))
    target = torch.as_tensor(np.asarray(y_true, dtype=np.int64))
    per_class = {"num_classes": n, "average": "none"}
    return {
        "confusion": tmc.multiclass_confusion_matrix(preds, target, num_classes=n).numpy(),
        "accuracy": tmc.multiclass_accuracy(preds, target, num_classes=n, average="micro").numpy(),
        "precision": tmc.multiclass_precision(preds, target, **per_class).numpy(),
        "recall": tmc.multiclass_recall(preds, target, **per_class).numpy(),
        "f1": tmc.multiclass_f1_score(preds, target, **per_class).numpy(),
    }


def _overall(table: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy, macro-F1 over the classes present in the labels, n and the confusion matrix."""
    confusion = table["confusion"]
    present = confusion.sum(axis=1) > 0
    return {
        "accuracy": float(table["accuracy"]),
        "macro_f1": float(table["f1"][present].mean()) if present.any() else 0.0,
        "n": int(confusion.sum()),
        "confusion": confusion,
    }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> dict[str, Any]:
    """Accuracy and macro-F1 over the classes present in ``y_true``, and the confusion matrix.

    Macro-F1 is the mean per-class F1 of the classes that occur in the labels, not
    torchmetrics' ``average="macro"``, which also averages in a class that is only predicted
    (with F1 0). The promotion gate compares challenger and champion on the same split and
    slices, so the classes averaged must depend on the data alone: under torchmetrics' macro,
    one spurious prediction of a class absent from a small slice adds a zero to that model's
    average only (a third off a two-class slice, past ``max_slice_drop``), and the two models
    end up averaged over different classes. The wrong prediction is still paid for, once, in
    the recall of the true class. (Training's ``val/macro_f1`` uses torchmetrics' macro: it
    only ranks epochs of one model.)
    """
    return _overall(_class_table(y_true, y_pred, n))


def slice_members(slices: dict[str, Sequence[Any]] | None) -> dict[str, list[int]]:
    """``family=value`` -> the indices of the items in it, sorted by name; an item whose value
    is a list (several tags) belongs to several slices."""
    members: dict[str, list[int]] = {}
    for family, values in (slices or {}).items():
        for index, value in enumerate(values):
            for v in value if isinstance(value, list | tuple) else [value]:
                members.setdefault(f"{family}={v}", []).append(index)
    return dict(sorted(members.items()))


def classification_report(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    classes: Sequence[str],
    slices: dict[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Overall, per-class and per-slice metrics; slices smaller than ``MIN_SLICE`` are skipped.

    ``slices`` maps a slice family (``device_type``, ``tag``) to one value per item; a value
    may be a list (an item with several tags belongs to several slices).
    """
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    table = _class_table(y_true, y_pred, len(classes))
    overall = _overall(table)
    confusion = overall.pop("confusion")
    per_class = {
        name: {"precision": float(table["precision"][i]), "recall": float(table["recall"][i]),
               "f1": float(table["f1"][i]), "support": int(confusion[i].sum())}
        for i, name in enumerate(classes)
    }
    by_slice: dict[str, dict[str, float]] = {}
    small: dict[str, int] = {}  # slices too small to score, with their size
    for name, idx in slice_members(slices).items():
        if len(idx) >= MIN_SLICE:
            m = classification_metrics(y_true[idx], y_pred[idx], len(classes))
            by_slice[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
        else:
            small[name] = len(idx)
    return {"overall": overall, "per_class": per_class, "slices": by_slice,
            "small_slices": small, "confusion": confusion.tolist(), "classes": list(classes)}


def regression_report(y_true: np.ndarray, y_pred: np.ndarray, targets: Sequence[str],
                     slices: dict[str, Sequence[Any]] | None = None) -> dict:
    """MAE, RMSE and R2 per target and overall.

    Overall MAE and RMSE pool every (row, target) error, so they are the errors of one
    prediction on the common [0, 1] scale of the indices; overall R2 is the mean of the
    per-target R2 (torchmetrics' ``uniform_average``), since R2 of the pooled values would
    credit the model for the differences between the targets' means. A target with no
    variance in the split gets R2 0 (1 when predicted exactly), torchmetrics' convention, so
    the report stays finite. R2 needs two rows: fewer raise ``ValueError`` (a split that
    small cannot judge a model, and a NaN would pass every gate comparison).
    """
    import torch
    from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score

    k = len(targets)
    target = torch.as_tensor(np.asarray(y_true, dtype=np.float64)).reshape(-1, k)
    preds = torch.as_tensor(np.asarray(y_pred, dtype=np.float64)).reshape(-1, k)
    n = int(target.shape[0])
    if n < 2:
        raise ValueError(f"regression needs at least 2 test rows to score, got {n}")
    mae = mean_absolute_error(preds, target, num_outputs=k).reshape(-1)
    rmse = mean_squared_error(preds, target, squared=False, num_outputs=k).reshape(-1)
    r2 = r2_score(preds, target, multioutput="raw_values").reshape(-1)
    overall = {
        "mae": float(mean_absolute_error(preds.reshape(-1), target.reshape(-1))),
        "rmse": float(mean_squared_error(preds.reshape(-1), target.reshape(-1), squared=False)),
        "r2": float(r2.mean()),
        "n": n,
    }
    by_slice, small = {}, {}
    for name, idx in slice_members(slices).items():
        if len(idx) < MIN_SLICE:
            small[name] = len(idx)
            continue
        err = (preds[idx] - target[idx]).reshape(-1)
        by_slice[name] = {"mae": float(err.abs().mean()),
                          "rmse": float(err.pow(2).mean().sqrt()), "n": len(idx)}
    return {
        "overall": overall,
        "per_target": {t: {"mae": float(mae[i]), "rmse": float(rmse[i]), "r2": float(r2[i])}
                       for i, t in enumerate(targets)},
        "slices": by_slice,
        "small_slices": small,
    }
