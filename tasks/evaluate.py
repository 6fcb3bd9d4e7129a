"""Evaluate: challenger and champion scored on the same test split.

:func:`score` is pure (labels in, report out: ``overall``, ``per_class``, ``slices``,
``confusion``); :func:`evaluate_versions` loads models from the registry, predicts, scores and
logs a confusion-matrix plot and the report to the challenger's MLflow run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from sqlalchemy import select

from models.zoo import ModelSpec, get_spec
from oceanml.db import Evaluation, session_factory
from oceanml.lineage import flow_run_id
from oceanml.registry import alias_version, load_model
from oceanml.registry import client as mlflow_client
from oceanml.settings import Settings, get_settings
from tasks.dataset import local_dataset

MIN_SLICE = 5


def _f1_table(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(axis=0), out=np.zeros_like(tp), where=confusion.sum(axis=0) > 0)
    recall = np.divide(tp, confusion.sum(axis=1), out=np.zeros_like(tp), where=confusion.sum(axis=1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> dict[str, Any]:
    """Accuracy and macro-F1 over the classes present in ``y_true``."""
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    _, _, f1 = _f1_table(confusion)
    present = confusion.sum(axis=1) > 0
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "n": int(len(y_true)),
        "confusion": confusion,
    }


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
    overall = classification_metrics(y_true, y_pred, len(classes))
    confusion = overall.pop("confusion")
    precision, recall, f1 = _f1_table(confusion)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(confusion[i].sum())}
        for i, name in enumerate(classes)
    }
    by_slice: dict[str, dict[str, float]] = {}
    for family, values in (slices or {}).items():
        members: dict[str, list[int]] = {}
        for index, value in enumerate(values):
            for v in value if isinstance(value, list | tuple) else [value]:
                members.setdefault(f"{family}={v}", []).append(index)
        for name, idx in sorted(members.items()):
            if len(idx) >= MIN_SLICE:
                m = classification_metrics(y_true[idx], y_pred[idx], len(classes))
                by_slice[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
    return {"overall": overall, "per_class": per_class, "slices": by_slice,
            "confusion": confusion.tolist(), "classes": list(classes)}


def regression_score(y_true: np.ndarray, y_pred: np.ndarray, targets: Sequence[str]) -> dict:
    err = np.abs(y_true - y_pred)
    return {
        "overall": {"mae": float(err.mean()), "mse": float((err**2).mean()), "n": len(y_true)},
        "per_target": {t: {"mae": float(err[:, i].mean())} for i, t in enumerate(targets)},
        "slices": {},
    }


def predict(net: Any, dataset_dir: Path, spec: ModelSpec, batch_size: int = 256) -> tuple:
    """Predictions of ``net`` on the test split, with the labels and slice columns."""
    import torch

    from models.datamodule import ShardStream, read_split

    data = ShardStream(dataset_dir, "test", spec, batch_size)  # one reader: shard order
    meta = read_split(dataset_dir, "test", ["device_type", "llm_tags"])
    outputs, labels = [], []
    net.eval()
    with torch.no_grad():
        for images, targets in data:
            out = net(images)
            outputs.append(out.argmax(dim=1) if spec.task == "classification" else out)
            labels.append(targets)
    preds = torch.cat(outputs).numpy() if outputs else np.array([])
    truth = torch.cat(labels).numpy() if labels else np.array([])
    slices = {"device_type": meta["device_type"],
              "tag": [t.split(",") if t else [] for t in meta["llm_tags"]]}
    return truth, preds, slices


def report_for(net: Any, dataset_dir: Path, spec: ModelSpec) -> dict[str, Any]:
    truth, preds, slices = predict(net, dataset_dir, spec)
    if spec.task == "classification":
        return score(truth, preds, spec.outputs, slices)
    return regression_score(truth, preds, spec.outputs)


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


@dataclass
class EvalOutcome:
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    artifacts: dict[str, str] = field(default_factory=dict)


def evaluate_versions(
    spec: ModelSpec,
    dataset_dir: Path,
    settings: Settings,
    challenger_version: str,
    champion_version: str | None,
) -> EvalOutcome:
    """Score both versions on ``dataset_dir``'s test split; log plots and the report to MLflow."""
    mlc = mlflow_client(settings)
    challenger = report_for(load_model(mlc, spec.name, challenger_version), dataset_dir, spec)
    champion = None
    if champion_version and champion_version != challenger_version:
        champion = report_for(load_model(mlc, spec.name, champion_version), dataset_dir, spec)
    run_id = mlc.get_model_version(spec.name, challenger_version).run_id
    artifacts = {"report": "evaluation/report.json"}
    mlc.log_dict(run_id, {"challenger": challenger, "champion": champion,
                             "champion_version": champion_version}, artifacts["report"])
    if "confusion" in challenger:
        import matplotlib.pyplot as plt

        fig = confusion_figure(challenger, f"{spec.name} v{challenger_version} (test)")
        artifacts["confusion_matrix"] = "evaluation/confusion_matrix.png"
        mlc.log_figure(run_id, fig, artifacts["confusion_matrix"])
        plt.close(fig)
    for name, value in challenger["overall"].items():
        mlc.log_metric(run_id, f"eval/{name}", float(value))
    return EvalOutcome(challenger, champion, artifacts)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def evaluation_markdown(model: str, outcome: dict[str, Any]) -> str:
    """The evaluation report: overall, per class and the weakest slices, side by side."""
    challenger, champion = outcome["challenger"], outcome.get("champion")
    champ_v = outcome.get("champion_version")
    lines = [f"# Evaluation of `{model}` v{outcome['model_version']}",
             f"Test split of dataset `{outcome['dataset_version']}`; champion: "
             + (f"v{champ_v}" if champ_v else "none"), "",
             "| metric | challenger | champion |", "|---|---|---|"]
    for name, value in challenger["overall"].items():
        other = champion["overall"].get(name) if champion else None
        lines.append(f"| {name} | {_fmt(value)} | {_fmt(other) if other is not None else '-'} |")
    if "per_class" in challenger:
        lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
        for name, m in challenger["per_class"].items():
            lines.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} "
                         f"| {m['support']} |")
    worst = sorted(challenger["slices"].items(), key=lambda kv: kv[1].get("macro_f1", 0))[:8]
    if worst:
        lines += ["", "Weakest slices:", "", "| slice | n | accuracy | macro_f1 |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {m['n']} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} |"
                  for name, m in worst]
    return "\n".join(lines)


@task(name="evaluate", retries=1, retry_delay_seconds=10)
def evaluate_task(model: str, dataset_version: str, model_version: str) -> dict[str, Any]:
    """Score ``model_version`` and the current champion on the dataset's test split."""
    settings = get_settings()
    sessions = session_factory(settings.db_url)
    champion = alias_version(mlflow_client(settings), model)
    champ_v = str(champion.version) if champion else ""
    key = (Evaluation.model_name == model, Evaluation.model_version == model_version,
           Evaluation.champion_version == champ_v, Evaluation.dataset_version == dataset_version)
    with sessions() as session:
        row = session.scalar(select(Evaluation).where(*key))
        reused = row is not None
        if row is None:
            outcome = evaluate_versions(get_spec(model), local_dataset(settings, model, dataset_version),
                                        settings, model_version, champ_v or None)
            row = Evaluation(model_name=model, model_version=model_version,
                             champion_version=champ_v, dataset_version=dataset_version,
                             challenger_metrics=outcome.challenger,
                             champion_metrics=outcome.champion, flow_run_id=flow_run_id())
            session.add(row)
            session.commit()
    result = {"model_version": model_version, "champion_version": champ_v or None,
              "dataset_version": dataset_version, "challenger": row.challenger_metrics,
              "champion": row.champion_metrics, "reused": reused}
    create_markdown_artifact(evaluation_markdown(model, result), key=f"evaluation-{model}",
                             description="challenger vs champion on the test split")
    return result
