"""Evaluate: challenger and champion scored on the same test split, beside the trivial
predictors fit on its train split.

:func:`evaluate_versions` loads models from the registry, predicts, scores (the pure
metrics of :mod:`tasks.metrics`) and logs the figures and the report
(:mod:`tasks.evaluation_report`) to the challenger's MLflow run; :func:`evaluate` is the
stage's logic (reuse or score, then record), which :func:`evaluate_task` wraps.
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
from core.database import session_factory
from core.logs import stage_logger
from core.records import Evaluation
from core.registry import client as mlflow_client
from core.registry import load_model, run_link, tracking_uri
from core.settings import get_settings
from models.zoo import ModelSpec, get_spec
from tasks.baselines import split_targets, trivial_predictions
from tasks.dataset import local_dataset
from tasks.evaluation_report import confusion_figure, evaluation_markdown, regression_figures
from tasks.metrics import classification_report, regression_report
from tasks.results import EvaluationResult

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

CURRENT = object()  # evaluate against whatever is champion now


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
        report = classification_report(truth, preds, spec.outputs, slices)
    else:
        report = regression_report(truth, preds, spec.outputs, slices)
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
) -> EvaluationResult:
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

    ``champion_version`` of the result is None before any champion.
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
    return EvaluationResult(model_version, champ_v or None, dataset_version, challenger,
                            challenger if itself else row.champion_metrics, reused)


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


@task(name="evaluate", retries=1, retry_delay_seconds=10, timeout_seconds=2 * 3600)
def evaluate_task(model: str, dataset_version: str, model_version: str) -> EvaluationResult:
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
        result.champion_version or "none", dataset_version,
        " (recorded earlier)" if result.reused else "", result.challenger["overall"])
    return result
