"""Evaluate: challenger and champion scored on the same test split.

:func:`score` and :func:`regression_score` are pure (labels in, report out: ``overall``,
``per_class`` or ``per_target``, ``slices``, and ``confusion`` for classification);
:func:`evaluate_versions` loads models from the registry, predicts, scores and logs a
confusion-matrix plot and the report to the challenger's MLflow run; :func:`evaluate` is the
stage's logic (reuse or score, then record), which :func:`evaluate_task` wraps.

The metrics are torchmetrics' functional ones (the same library the training loop logs
with), so evaluation and training agree on what precision, F1 or R2 mean. One definition is
ours on purpose: macro-F1, see :func:`classification_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from core import lineage
from core.champion_history import current_champion
from core.db import Evaluation, session_factory
from core.logs import stage_logger
from core.registry import client as mlflow_client
from core.registry import load_model, run_link, tracking_uri
from core.settings import get_settings
from models.zoo import ModelSpec, get_spec
from tasks.baselines import split_targets, trivial_predictions
from tasks.dataset import local_dataset

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MIN_SLICE = 5
CURRENT = object()  # evaluate against whatever is champion now


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


def score(
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


def regression_score(y_true: np.ndarray, y_pred: np.ndarray, targets: Sequence[str],
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


def test_slices(dataset_dir: Path) -> dict[str, list]:
    """The slice columns of the test split in shard order: device id (shards format v3+),
    device type and LLM tags."""
    import pyarrow.parquet as pq

    from models.datamodule import read_split

    shards = sorted(Path(dataset_dir).glob("test-*.parquet"))
    by_device = bool(shards) and "device_id" in pq.read_schema(shards[0]).names  # format v3+
    meta = read_split(dataset_dir, "test",
                      ["device_type", "llm_tags"] + (["device_id"] if by_device else []))
    return {**({"device_id": meta["device_id"]} if by_device else {}),
            "device_type": meta["device_type"],
            "tag": [t.split(",") if t else [] for t in meta["llm_tags"]]}


def predict(net: Any, dataset_dir: Path, spec: ModelSpec) -> tuple:
    """Predictions of ``net`` on the test split (classes, or values), with the labels, the
    slice columns and the head's raw outputs (logits before the temperature)."""
    import torch

    from models.calibration import raw_outputs

    raw, truth = raw_outputs(net, dataset_dir, "test", spec)
    with torch.no_grad():
        out = net.answer(raw)
    preds = out.argmax(dim=1) if spec.task == "classification" else out
    return truth.numpy(), preds.numpy(), test_slices(dataset_dir), raw


def scored_report(spec: ModelSpec, truth: np.ndarray, preds: np.ndarray,
                  slices: dict[str, Sequence[Any]]) -> dict[str, Any]:
    """The report of ``preds`` against ``truth``, with its per-example ``examples`` (labels
    and predictions in shard order), which the promotion gate pairs across two models."""
    if spec.task == "classification":
        report = score(truth, preds, spec.outputs, slices)
    else:
        report = regression_score(truth, preds, spec.outputs, slices)
    report["examples"] = {"y_true": np.asarray(truth).tolist(),
                          "y_pred": np.asarray(preds).tolist()}
    return report


def report_for(net: Any, dataset_dir: Path, spec: ModelSpec) -> dict[str, Any]:
    """The report of ``net`` on the test split (:func:`scored_report`), with the calibration
    of a classifier's probabilities (:func:`calibration`)."""
    truth, preds, slices, raw = predict(net, dataset_dir, spec)
    report = scored_report(spec, truth, preds, slices)
    if spec.task == "classification":
        report["calibration"] = calibration(net, raw, truth)
    return report


def calibration(net: Any, raw: Any, truth: np.ndarray) -> dict[str, Any]:
    """ECE (15 bins) on the test split before and after the version's temperature, and the
    reliability tables behind the diagram. A version stored before temperatures has T = 1."""
    from models.calibration import calibration_summary

    temperature = getattr(net, "_buffers", {}).get("temperature")
    t = float(temperature) if temperature is not None else 1.0
    return calibration_summary(raw, truth, t)


def trivial_reports(spec: ModelSpec, dataset_dir: Path, truth: np.ndarray,
                    slices: dict[str, Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """The trivial predictors (:mod:`tasks.baselines`), fit on the train split and scored on
    the same test examples as the model: name -> report."""
    train = split_targets(spec, dataset_dir)
    return {name: scored_report(spec, truth, preds, slices)
            for name, preds in trivial_predictions(spec, train, len(truth)).items()}


def confusion_figure(report: dict[str, Any], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(report["confusion"])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(report["classes"])), report["classes"], rotation=30)
    ax.set_yticks(range(len(report["classes"])), report["classes"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black")
    fig.tight_layout()
    return fig


def regression_figures(report: dict[str, Any], spec: ModelSpec, version: str) -> dict[str, Any]:
    """Predicted against true (one panel per target, the diagonal drawn) and the residuals'
    histogram per target, from the report's per-example ``examples``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = np.asarray(report["examples"]["y_true"], dtype=float).reshape(-1, spec.num_outputs)
    preds = np.asarray(report["examples"]["y_pred"], dtype=float).reshape(-1, spec.num_outputs)
    k = spec.num_outputs
    scatter, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.2), squeeze=False)
    residual, raxes = plt.subplots(1, k, figsize=(3.2 * k, 2.8), squeeze=False)
    for i, target in enumerate(spec.outputs):
        ax = axes[0][i]
        ax.scatter(truth[:, i], preds[:, i], s=8, alpha=0.6)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        raxes[0][i].hist(preds[:, i] - truth[:, i], bins=20)
        raxes[0][i].set_title(f"{target}: predicted - true", fontsize=9)
    scatter.suptitle(f"{spec.name} v{version} (test)")
    for fig in (scatter, residual):
        fig.tight_layout()
    return {"predicted_vs_true": scatter, "residuals": residual}


@dataclass
class EvalOutcome:
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    artifacts: dict[str, str] = field(default_factory=dict)


def evaluate_versions(
    mlc: MlflowClient,
    spec: ModelSpec,
    dataset_dir: Path,
    challenger_version: str,
    champion_version: str | None,
) -> EvalOutcome:
    """Score both versions on ``dataset_dir``'s test split; log plots and the report to MLflow."""
    challenger = with_trivial(
        report_for(load_model(mlc, spec.name, challenger_version), dataset_dir, spec), spec,
        lambda: dataset_dir)
    champion = None
    if champion_version and champion_version != challenger_version:
        champion = report_for(load_model(mlc, spec.name, champion_version), dataset_dir, spec)
    run_id = mlc.get_model_version(spec.name, challenger_version).run_id
    artifacts = {"report": "evaluation/report.json"}
    mlc.log_dict(run_id, {"challenger": challenger, "champion": champion,
                          "champion_version": champion_version}, artifacts["report"])
    import matplotlib.pyplot as plt

    figures = {}
    if "confusion" in challenger:
        figures["confusion_matrix"] = confusion_figure(
            challenger, f"{spec.name} v{challenger_version} (challenger, test)")
        if champion is not None:
            figures["confusion_matrix_champion"] = confusion_figure(
                champion, f"{spec.name} v{champion_version} (champion, same split)")
        from models.calibration import reliability_figure

        figures["reliability"] = reliability_figure(
            challenger["calibration"], f"{spec.name} v{challenger_version}: test split")
    else:
        figures.update(regression_figures(challenger, spec, challenger_version))
    for name, fig in figures.items():
        artifacts[name] = f"evaluation/{name}.png"
        mlc.log_figure(run_id, fig, artifacts[name])
        plt.close(fig)
    for name, value in challenger["overall"].items():
        mlc.log_metric(run_id, f"eval/{name}", float(value))
    for name in ("temperature", "ece_before", "ece_after") if "calibration" in challenger else ():
        mlc.log_metric(run_id, f"eval/{name}", float(challenger["calibration"][name]))
    for trivial, report in challenger["trivial"].items():  # beside the model's, in the run
        for name, value in report["overall"].items():
            mlc.log_metric(run_id, f"eval/trivial_{trivial}/{name}", float(value))
    return EvalOutcome(challenger, champion, artifacts)


def evaluate(
    sessions: sessionmaker,
    mlc: MlflowClient,
    spec: ModelSpec,
    dataset_version: str,
    model_version: str,
    dataset_dir: Callable[[], Path],
    flow_run_id: str | None,
    *,
    champion_version: str | None | object = CURRENT,
) -> dict[str, Any]:
    """The evaluation of ``model_version`` against the current champion: recorded, or made.

    An evaluation is identified by (model, version, champion version, dataset version): when
    the DB holds one, it is returned with ``reused`` True and nothing is loaded, logged or
    written. A version that is the champion already is not scored against itself: any
    evaluation of it on that dataset is its report (a second night adds none). Otherwise
    both versions are scored (:func:`evaluate_versions`, which logs to the challenger's
    MLflow run) and an ``Evaluation`` row records the reports. ``dataset_dir``
    is called only then: resolving a dataset version may mean a DVC restore. The champion is
    the current one (``core.champion_history``) unless ``champion_version`` names one (the
    promotion re-evaluates against a champion that changed meanwhile); None means none.

    Returns:
        ``model_version``, ``champion_version`` (None before any champion),
        ``dataset_version``, the ``challenger`` and ``champion`` reports, and ``reused``.
    """
    if champion_version is CURRENT:
        champion_version = current_champion(sessions, mlc, spec.name)
    champ_v = str(champion_version or "")
    itself = champ_v == str(model_version)  # the champion already: any evaluation of it will do
    key = [Evaluation.model_name == spec.name, Evaluation.model_version == model_version,
           Evaluation.dataset_version == dataset_version]
    if not itself:
        key.append(Evaluation.champion_version == champ_v)
    with sessions() as session:
        row = session.scalar(select(Evaluation).where(*key).order_by(Evaluation.id.desc())
                             .limit(1))
        reused = row is not None
        if row is None:
            outcome = evaluate_versions(mlc, spec, dataset_dir(), model_version,
                                        None if itself else champ_v or None)
            row = Evaluation(model_name=spec.name, model_version=model_version,
                             champion_version=champ_v, dataset_version=dataset_version,
                             challenger_metrics=outcome.challenger,
                             champion_metrics=outcome.champion, flow_run_id=flow_run_id)
            session.add(row)
            session.commit()
    challenger = with_trivial(row.challenger_metrics, spec, dataset_dir)
    return {"model_version": model_version, "champion_version": champ_v or None,
            "dataset_version": dataset_version, "challenger": challenger,
            "champion": challenger if itself else row.champion_metrics,
            "reused": reused}


def with_trivial(report: dict[str, Any], spec: ModelSpec, dataset_dir: Callable[[], Path]
                 ) -> dict[str, Any]:
    """``report`` with the trivial predictors' reports on its test examples, computed unless
    it has them: for a new evaluation, and for one recorded before they were kept (not
    stored then: the row stays as it was written)."""
    if "trivial" in report or not report.get("examples"):
        return report
    directory = dataset_dir()
    truth = np.asarray(report["examples"]["y_true"])
    return {**report, "trivial": trivial_reports(spec, directory, truth, test_slices(directory))}


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _cells(values: Sequence[Any]) -> str:
    """``challenger / champion / trivial...`` for a table cell; ``-`` for what a report lacks."""
    return " / ".join(_fmt(v) if v is not None else "-" for v in values)


def evaluation_markdown(model: str, outcome: dict[str, Any], link: str = "") -> str:
    """The evaluation report, challenger, champion and the trivial predictors side by side:
    overall (with the difference to the champion), per class or per target, every scored
    slice with its size, the slices too small to score, and where the plots are (``link``:
    the challenger's MLflow run)."""
    challenger, champion = outcome["challenger"], outcome.get("champion") or {}
    trivial = challenger.get("trivial") or {}
    reports = [challenger, champion, *trivial.values()]
    names = ["challenger", "champion", *trivial]
    champ_v = outcome.get("champion_version")
    lines = [f"# Evaluation of `{model}` v{outcome['model_version']}",
             f"Test split of dataset `{outcome['dataset_version']}`; champion: "
             + (f"v{champ_v}" if champ_v else "none")
             + (f"; trivial predictors fit on its train split: {', '.join(trivial)}"
                if trivial else "")
             + f". Cells read {' / '.join(names)}.", "",
             "| metric | challenger | champion | difference | " + " | ".join(trivial)
             + (" |" if trivial else "|"), "|---|---|---|---|" + "---|" * len(trivial)]
    for name, value in challenger["overall"].items():
        other = champion.get("overall", {}).get(name)
        diff = value - other if isinstance(value, float) and other is not None else None
        extra = "".join(f" {_fmt(r['overall'].get(name))} |" for r in trivial.values())
        lines.append(f"| {name} | {_fmt(value)} | {_fmt(other) if other is not None else '-'} "
                     f"| {f'{diff:+.3f}' if diff is not None else '-'} |{extra}")
    for section, label, keys in (("per_class", "class", ("precision", "recall", "f1")),
                                 ("per_target", "target", ("mae", "rmse", "r2"))):
        if section not in challenger:
            continue
        extra = " support |" if section == "per_class" else ""
        lines += ["", f"| {label} |{extra} " + " | ".join(keys) + " |",
                  "|---|" + "---|" * (len(keys) + bool(extra))]
        for name, m in challenger[section].items():
            rows = [r.get(section, {}).get(name, {}) for r in reports]
            cells = [_cells([row.get(k) for row in rows]) for k in keys]
            support = f" {m['support']} |" if extra else ""
            lines.append(f"| {name} |{support} " + " | ".join(cells) + " |")
    mine = challenger.get("slices", {})
    regression = any("mae" in m for m in mine.values())
    keys = ("mae", "rmse") if regression else ("accuracy", "macro_f1")
    ordered = sorted(mine.items(), key=lambda kv: -kv[1]["mae"] if regression
                     else kv[1]["macro_f1"])
    if ordered:
        lines += ["", "Slices, weakest first:", "", f"| slice | n | {' | '.join(keys)} |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {m['n']} | " + " | ".join(
                      _cells([r.get("slices", {}).get(name, {}).get(k) for r in reports])
                      for k in keys) + " |"
                  for name, m in ordered]
    cal = challenger.get("calibration")
    if cal:
        lines += ["", f"Calibration on the test split ({cal['n']} examples, {cal['bins']} bins): "
                  f"temperature {cal['temperature']:.3f} (fit on the validation split), "
                  f"ECE {cal['ece_before']:.3f} before scaling, {cal['ece_after']:.3f} after"
                  + (f"; NLL {cal['nll_before']:.3f} -> {cal['nll_after']:.3f}"
                     if "nll_before" in cal else "")]
    small = challenger.get("small_slices") or {}
    if small:
        lines += ["", f"Too few examples to score (under {MIN_SLICE}): "
                  + ", ".join(f"{name} ({n})" for name, n in sorted(small.items()))]
    if link:
        lines += ["", f"Plots and the full report: {link}"]
    return "\n".join(lines)


@task(name="evaluate", retries=1, retry_delay_seconds=10, timeout_seconds=2 * 3600)
def evaluate_task(model: str, dataset_version: str, model_version: str) -> dict[str, Any]:
    """Score ``model_version`` and the current champion on the dataset's test split.

    :func:`evaluate` decides and records; this wrapper adds what needs a Prefect run: the
    markdown artifact and the run log.
    """
    settings = get_settings()
    result = evaluate(session_factory(settings.db_url), mlflow_client(settings), get_spec(model),
                      dataset_version, model_version,
                      lambda: local_dataset(settings, model, dataset_version),
                      lineage.flow_run_id())
    mlc = mlflow_client(settings)
    link = run_link(mlc, tracking_uri(settings),
                    mlc.get_model_version(model, model_version).run_id, "evaluation")
    create_markdown_artifact(evaluation_markdown(model, result, link), key=f"evaluation-{model}",
                             description="challenger vs champion on the test split")
    stage_logger("evaluate").info(
        "evaluate: %s v%s against champion %s on %s%s: %s", model, model_version,
        result["champion_version"] or "none", dataset_version,
        " (recorded earlier)" if result["reused"] else "", result["challenger"]["overall"])
    return result
