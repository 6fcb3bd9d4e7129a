"""The evaluate stage's logic on real shards, a real SQLite DB and a real MLflow store.

``evaluate`` is what ``evaluate_task`` runs; the task only adds the markdown artifact and the
log. No model is trained: versions are untrained nets that always answer one class, logged
and registered the way the trainer does it, so the expected report follows from the labels.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import select
from torch import nn

from core.records import Evaluation
from core.registry import client, set_champion
from models.calibration import calibration_summary
from models.datamodule import read_split
from models.net import OceanNet
from models.zoo import get_spec
from tasks.baselines import trivial_predictions
from tasks.evaluate import evaluate
from tasks.metrics import classification_report
from tasks.results import EvaluationResult
from tests.mlflow_recording import Recording
from tests.registered import register as register_version

SPEC = get_spec("plastic-detector")
SIZE = 32


def always(label: str) -> nn.Module:
    """An untrained OceanNet whose logits always favour ``label``."""
    net = OceanNet(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 3, SPEC.num_outputs,
                   SPEC.task)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.eye(SPEC.num_outputs)[SPEC.outputs.index(label)] * 5)
    return net.eval()


def register(mlc, settings, label: str) -> str:
    """A registered version answering ``label``, tagged as the trainer tags its versions."""
    return register_version(mlc, settings, always(label), f"always-{label}", size=SIZE)


def expected(dataset: Path, label: str, challenger: bool = True) -> dict[str, Any]:
    """The report of a model answering ``label`` on every test row, from the shards' labels."""
    test = read_split(dataset, "test", ["label", "device_id", "device_type", "llm_tags"])
    truth = [SPEC.outputs.index(x) for x in test["label"]]
    slices = {"device_id": test["device_id"], "device_type": test["device_type"],
              "tag": [t.split(",") if t else [] for t in test["llm_tags"]]}
    preds = [SPEC.outputs.index(label)] * len(truth)
    logits = torch.eye(SPEC.num_outputs)[preds] * 5  # what ``always`` answers, at T = 1
    report = {**classification_report(truth, preds, SPEC.outputs, slices),
              "examples": {"y_true": truth, "y_pred": preds},  # in shard order, for pairing
              "calibration": calibration_summary(logits, np.asarray(truth), 1.0)}
    # one confidence for every answer: the ECE is its gap to the accuracy
    confidence = float(np.exp(5) / (np.exp(5) + SPEC.num_outputs - 1))
    assert report["calibration"]["ece_before"] == pytest.approx(
        abs(confidence - report["overall"]["accuracy"]), abs=1e-6)
    if not challenger:
        return report
    train = [SPEC.outputs.index(x) for x in read_split(dataset, "train", ["label"])["label"]]
    majority = max(set(train), key=train.count)
    prior = trivial_predictions(SPEC, np.asarray(train), len(truth))["prior"].tolist()
    report["trivial"] = {name: {**classification_report(truth, p, SPEC.outputs, slices),
                                "examples": {"y_true": truth, "y_pred": p}}
                         for name, p in (("majority", [majority] * len(truth)),
                                         ("prior", prior))}
    return report


def rows(sessions) -> list[Evaluation]:
    with sessions() as s:
        return list(s.scalars(select(Evaluation).order_by(Evaluation.id)))


def test_an_evaluation_is_scored_logged_and_recorded_once(settings, sessions, dataset) -> None:
    mlc = client(settings)
    v1 = register(mlc, settings, "none")
    resolved: list[Path] = []

    def dataset_dir() -> Path:
        resolved.append(dataset)
        return dataset

    first = evaluate(sessions, mlc, SPEC, "ds-1", v1, dataset_dir, "run-1")
    report = expected(dataset, "none")
    labels = read_split(dataset, "test", ["label"])["label"]
    assert report["overall"]["accuracy"] == pytest.approx(labels.count("none") / len(labels))
    assert first == EvaluationResult(v1, None, "ds-1", report, None, reused=False)
    [row] = rows(sessions)
    assert (row.model_name, row.model_version, row.champion_version, row.dataset_version,
            row.champion_metrics, row.flow_run_id) == (SPEC.name, v1, "", "ds-1", None, "run-1")
    assert row.challenger_metrics == report
    run_id = mlc.get_model_version(SPEC.name, v1).run_id
    metrics = mlc.get_run(run_id).data.metrics
    trivial = {f"eval/trivial_{name}/{k}": pytest.approx(v)
               for name, r in report["trivial"].items() for k, v in r["overall"].items()}
    assert {k: v for k, v in metrics.items() if k.startswith("eval/")} == {
        "eval/accuracy": pytest.approx(report["overall"]["accuracy"]),
        "eval/macro_f1": pytest.approx(report["overall"]["macro_f1"]),
        "eval/n": len(labels), "eval/temperature": 1.0,
        "eval/ece_before": pytest.approx(report["calibration"]["ece_before"]),
        "eval/ece_after": pytest.approx(report["calibration"]["ece_after"]), **trivial}
    logged = {a.path for a in mlc.list_artifacts(run_id, "evaluation")}
    assert logged == {"evaluation/report.json", "evaluation/confusion_matrix.png",
                      "evaluation/reliability.png"}

    recording = Recording(mlc)  # a re-run, a retry: the recorded evaluation, nothing loaded
    again = evaluate(sessions, recording, SPEC, "ds-1", v1, dataset_dir, "run-2")
    assert again == replace(first, reused=True)
    assert recording.writes == [] and len(resolved) == 1 and len(rows(sessions)) == 1


def test_the_champion_is_not_scored_against_itself(settings, sessions, dataset) -> None:
    """A second night: the version trained and promoted the first night is the champion now;
    its first evaluation is its report, with itself as the champion, and nothing is added."""
    mlc = client(settings)
    v1 = register(mlc, settings, "none")
    first = evaluate(sessions, mlc, SPEC, "ds-1", v1, lambda: dataset, "run-1")
    set_champion(mlc, SPEC.name, v1)
    recording = Recording(mlc)
    again = evaluate(sessions, recording, SPEC, "ds-1", v1, lambda: dataset, "run-2")
    assert again == replace(first, champion_version=v1, champion=first.challenger, reused=True)
    assert recording.writes == [] and len(rows(sessions)) == 1
    fresh = evaluate(sessions, mlc, SPEC, "ds-2", v1, lambda: dataset, "run-3")
    assert not fresh.reused and fresh.champion == fresh.challenger
    assert [(r.champion_version, r.champion_metrics) for r in rows(sessions)][1] == (v1, None)


def test_the_champion_is_scored_beside_and_keys_a_new_evaluation(
        settings, sessions, dataset, tmp_path) -> None:
    mlc = client(settings)
    v1, v2 = register(mlc, settings, "none"), register(mlc, settings, "light")
    alone = evaluate(sessions, mlc, SPEC, "ds-1", v2, lambda: dataset, "run-1")
    assert alone.champion is None and not alone.reused

    set_champion(mlc, SPEC.name, v1)
    against = evaluate(sessions, mlc, SPEC, "ds-1", v2, lambda: dataset, "run-2")
    assert not against.reused and against.champion_version == v1
    assert against.challenger == expected(dataset, "light")
    assert against.champion == expected(dataset, "none", challenger=False)
    assert [(r.model_version, r.champion_version, r.flow_run_id) for r in rows(sessions)] == [
        (v2, "", "run-1"), (v2, v1, "run-2")]
    assert rows(sessions)[1].champion_metrics == expected(dataset, "none", challenger=False)
    run_id = mlc.get_model_version(SPEC.name, v2).run_id
    report = json.loads(Path(mlc.download_artifacts(run_id, "evaluation/report.json",
                                                    str(tmp_path))).read_text())
    assert report["champion_version"] == v1 and report["champion"] == against.champion
    logged = {a.path for a in mlc.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png",  # both matrices, on the challenger's run
            "evaluation/confusion_matrix_champion.png"} <= logged
