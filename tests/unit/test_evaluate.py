"""Evaluation metrics against hand counts: the independent check of what torchmetrics computes
for us, and the pin of the one definition that is ours (macro-F1)."""

import math

import numpy as np
import pytest
import torch

from tasks.evaluation_report import evaluation_markdown
from tasks.metrics import classification_report, regression_report
from tasks.results import EvaluationResult

CLASSES = ("none", "light", "severe")


def test_overall_and_per_class_metrics_match_a_hand_count() -> None:
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    r = classification_report(y_true, y_pred, CLASSES)
    assert r["overall"]["accuracy"] == pytest.approx(4 / 6)
    # none: p=1/2 r=1/2; light: p=2/3 r=1; severe: p=1 r=1/2
    f1 = [0.5, 0.8, 2 / 3]
    assert r["overall"]["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert r["per_class"]["light"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["severe"]["support"] == 2
    assert r["confusion"][0] == [1, 1, 0]


def test_slices_group_items_and_multi_valued_tags(monkeypatch) -> None:
    monkeypatch.setattr("tasks.metrics.MIN_SLICE", 2)
    y_true = [0, 1, 2, 0, 1]
    y_pred = [0, 1, 0, 0, 2]
    slices = {"device_type": ["buoy", "buoy", "drone", "drone", "drone"],
              "tag": [["calm-sea"], ["calm-sea", "glare"], [], ["glare"], ["glare"]]}
    r = classification_report(y_true, y_pred, CLASSES, slices)
    assert r["slices"]["device_type=buoy"]["accuracy"] == 1.0
    assert r["slices"]["device_type=drone"]["accuracy"] == pytest.approx(1 / 3)
    assert r["slices"]["tag=glare"]["n"] == 3
    assert "tag=calm-sea" in r["slices"]


def test_small_slices_are_left_out() -> None:
    r = classification_report([0, 1], [0, 1], CLASSES, {"device_type": ["buoy", "drone"]})
    assert r["slices"] == {}


def test_macro_f1_averages_the_classes_in_the_labels_not_a_class_only_predicted() -> None:
    """The gate's definition (see ``classification_metrics``), pinned against torchmetrics'.

    ``severe`` is predicted once and never true. Hand count: none p=1 r=1/2 f1=2/3; light
    p=1 r=1 f1=1; severe p=0 r=0 f1=0, support 0. Ours averages none and light: 5/6;
    torchmetrics' ``average="macro"`` averages severe's 0 in too: 5/9.
    """
    from torchmetrics.functional.classification import multiclass_f1_score

    y_true, y_pred = [0, 0, 1, 1], [0, 2, 1, 1]
    r = classification_report(y_true, y_pred, CLASSES)
    assert r["overall"]["macro_f1"] == pytest.approx(5 / 6)
    assert r["overall"]["accuracy"] == pytest.approx(3 / 4)
    assert r["per_class"]["severe"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["per_class"]["none"]["f1"] == pytest.approx(2 / 3)
    assert r["confusion"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    theirs = multiclass_f1_score(torch.tensor(y_pred), torch.tensor(y_true), num_classes=3,
                                 average="macro")
    assert float(theirs) == pytest.approx(5 / 9)  # the definition we do not use


def test_a_spurious_prediction_in_a_slice_costs_its_recall_only(monkeypatch) -> None:
    """Slice macro-F1 depends on the slice's labels: one stray ``severe`` on a two-class
    slice costs 1/2 recall of ``none`` (F1 1 -> 2/3), not a third of the average."""
    monkeypatch.setattr("tasks.metrics.MIN_SLICE", 2)
    y_true, y_pred = [0, 0, 1, 1], [0, 2, 1, 1]
    r = classification_report(y_true, y_pred, CLASSES, {"device_type": ["buoy"] * 4})
    assert r["slices"]["device_type=buoy"] == {"accuracy": pytest.approx(3 / 4),
                                               "macro_f1": pytest.approx(5 / 6), "n": 4}


def test_no_items_score_zero_rather_than_fail() -> None:
    r = classification_report([], [], CLASSES)
    assert r["overall"] == {"accuracy": 0.0, "macro_f1": 0.0, "n": 0}
    assert r["confusion"] == [[0] * 3] * 3 and r["per_class"]["none"]["support"] == 0


REG_TRUE = [[0.0, 1.0], [1.0, 2.0], [2.0, 2.0]]
REG_PRED = [[0.5, 1.0], [1.0, 1.0], [2.0, 3.0]]


def test_regression_metrics_match_a_hand_count() -> None:
    """Errors a: -0.5, 0, 0; b: 0, 1, -1. Means a 1, b 5/3; total sums of squares a 2, b 2/3."""
    r = regression_report(np.array(REG_TRUE), np.array(REG_PRED), ("a", "b"))
    assert set(r) == {"overall", "per_target", "slices", "small_slices"} and r["slices"] == {}
    a, b = r["per_target"]["a"], r["per_target"]["b"]
    assert a == {"mae": pytest.approx(0.5 / 3), "rmse": pytest.approx(math.sqrt(0.25 / 3)),
                 "r2": pytest.approx(1 - 0.25 / 2)}
    assert b == {"mae": pytest.approx(2 / 3), "rmse": pytest.approx(math.sqrt(2 / 3)),
                 "r2": pytest.approx(1 - 2 / (2 / 3))}
    # overall: every (row, target) error pooled; R2 the mean of the targets' R2
    assert r["overall"] == {"mae": pytest.approx(2.5 / 6),
                            "rmse": pytest.approx(math.sqrt(2.25 / 6)),
                            "r2": pytest.approx((0.875 - 2.0) / 2), "n": 3}


def test_a_target_without_variance_gets_a_finite_r2() -> None:
    """Constant truth: R2 is 0/0 or x/0; 1 when predicted exactly, else 0 (never NaN or -inf,
    which JSON cannot hold and a gate comparison would let through)."""
    y = np.array([[0.5, 0.1], [0.5, 0.2], [0.5, 0.3]])
    exact = regression_report(y, y, ("const", "varying"))
    assert exact["per_target"]["const"]["r2"] == 1.0
    off = regression_report(y, y + [[0.2, 0.0]], ("const", "varying"))
    assert off["per_target"]["const"]["r2"] == 0.0
    assert off["per_target"]["const"]["mae"] == pytest.approx(0.2)
    assert off["overall"]["r2"] == pytest.approx(0.5)  # mean of 0 and the exact target's 1


def test_regression_needs_two_rows() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        regression_report(np.array([[0.1, 0.2]]), np.array([[0.1, 0.2]]), ("a", "b"))


def test_the_markdown_shows_every_target_and_older_reports_without_rmse() -> None:
    report = regression_report(np.array(REG_TRUE), np.array(REG_PRED), ("a", "b"))
    older = {"overall": {"mae": 0.2, "mse": 0.1, "n": 3},
             "per_target": {"a": {"mae": 0.1}, "b": {"mae": 0.3}}, "slices": {}}
    text = evaluation_markdown("water-quality", EvaluationResult(
        "2", "1", "d", report, older))
    assert "| target | mae | rmse | r2 |" in text
    assert "| b | 0.667 / 0.300 | 0.816 / - | -2.000 / - |" in text  # challenger / champion
    assert "| mae | 0.417 | 0.200 | +0.217 |" in text and "| rmse | 0.612 | - | - |" in text
    older_text = evaluation_markdown("water-quality", EvaluationResult(
        "1", None, "d", older, None))
    assert "| a | 0.100 / - | - / - | - / - |" in older_text


def test_the_markdown_sets_classes_and_slices_side_by_side_and_lists_small_slices() -> None:
    classes = ("none", "light", "severe")
    truth = [0] * 6 + [1] * 6 + [2] * 2
    slices = {"device_type": ["buoy"] * 7 + ["drone"] * 5 + ["camera"] * 2}
    challenger = classification_report(truth, truth, classes, slices)
    champion = classification_report(truth, [0] * 14, classes, slices)
    text = evaluation_markdown("plastic-detector", EvaluationResult(
        "3", "2", "d", challenger, champion), link="MLflow run `r1`")
    assert "| class | support | precision | recall | f1 |" in text
    assert "| light | 6 | 1.000 / 0.000 | 1.000 / 0.000 | 1.000 / 0.000 |" in text
    assert "| accuracy | 1.000 | 0.429 | +0.571 |" in text
    assert "| device_type=drone | 5 | 1.000 / 0.000 | 1.000 / 0.000 |" in text
    assert "Too few examples to score (under 5): device_type=camera (2)" in text
    assert text.endswith("Plots and the full report: MLflow run `r1`")


def test_regression_plots_show_every_target() -> None:
    from models.zoo import get_spec
    from tasks.evaluation_report import regression_figures

    spec = get_spec("water-quality")
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, (30, spec.num_outputs))
    report = {"examples": {"y_true": truth.tolist(), "y_pred": (truth * 0.9).tolist()}}
    figures = regression_figures(report, spec, "4")
    assert set(figures) == {"predicted_vs_true", "residuals"}
    scatter = figures["predicted_vs_true"]
    assert [ax.get_title() for ax in scatter.axes] == list(spec.outputs)
    assert all(len(ax.collections[0].get_offsets()) == 30 for ax in scatter.axes)


def test_regression_is_sliced_like_classification() -> None:
    truth = np.array([[0.1, 0.2]] * 6 + [[0.5, 0.5]] * 6 + [[0.9, 0.9]] * 2)
    preds = truth.copy()
    preds[6:12] += 0.3  # the drones are off by 0.3 on both targets
    slices = {"device_type": ["buoy"] * 6 + ["drone"] * 6 + ["camera"] * 2}
    report = regression_report(truth, preds, ("a", "b"), slices)
    assert report["slices"]["device_type=buoy"] == {"mae": 0.0, "rmse": 0.0, "n": 6}
    assert report["slices"]["device_type=drone"]["mae"] == pytest.approx(0.3)
    assert report["small_slices"] == {"device_type=camera": 2}
    text = evaluation_markdown("water-quality", EvaluationResult(
        "2", None, "d", report, None))
    assert "| slice | n | mae | rmse |" in text
    assert text.index("device_type=drone") < text.index("device_type=buoy")  # weakest first


def test_the_slice_gate_holds_for_a_regression_model() -> None:
    from core.params_schema import PromotionPolicy
    from tasks.gates import decide_promotion

    policy = PromotionPolicy(metric="mae", higher_is_better=False, floor=1.0, margin=0.001,
                             max_slice_drop=0.05)
    champion = {"overall": {"mae": 0.10}, "slices": {"device_type=drone": {"mae": 0.10}}}
    worse_on_drones = {"overall": {"mae": 0.05}, "slices": {"device_type=drone": {"mae": 0.2}},
                       "trivial": {"mean": {"overall": {"mae": 0.3}}}}
    decision = decide_promotion(worse_on_drones, champion, policy)
    assert not decision.promote
    assert decision.reason == "slice device_type=drone 0.100 -> 0.200: regresses more than 0.05"
