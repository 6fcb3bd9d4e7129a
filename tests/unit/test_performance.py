"""The label-free performance estimate: expected accuracy and macro-F1 from probabilities,
its interval, and when a window counts as performance drift."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.performance import (
    PerformancePolicy,
    estimate,
    expected_confusion,
    expected_metrics,
    performance_feature,
    realized,
)

POLICY = PerformancePolicy(metric="accuracy", drop=0.1, confidence=0.9, bootstrap_samples=300)


def calibrated_window(n: int, sharpness: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a calibrated model and labels drawn from them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, sharpness, (n, 3))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in p])
    return p, labels


@pytest.mark.parametrize("sharpness", [0.5, 2.0, 4.0])
def test_a_calibrated_models_estimate_is_its_realized_accuracy(sharpness) -> None:
    p, labels = calibrated_window(3000, sharpness, seed=1)
    truth = realized(labels, p.argmax(axis=1), 3)
    est = estimate(p, POLICY)
    for metric in ("accuracy", "macro_f1"):
        assert est[metric]["estimate"] == pytest.approx(truth[metric], abs=0.03), metric
        assert est[metric]["low"] <= est[metric]["estimate"] <= est[metric]["high"]


def test_the_expected_confusion_matrix_adds_each_answers_probabilities() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.8, 0.1, 0.1]])
    cm = expected_confusion(p)
    assert cm[:, 0] == pytest.approx([1.5, 0.3, 0.2])  # answers 0 and 3 predicted class 0
    assert cm.sum() == pytest.approx(4.0)
    assert expected_metrics(p)["accuracy"] == pytest.approx((0.7 + 0.6 + 0.5 + 0.8) / 4)


def test_a_window_far_below_the_test_figure_is_performance_drift() -> None:
    p, _ = calibrated_window(500, 1.0, seed=2)
    est = estimate(p, POLICY)["accuracy"]["estimate"]
    below = performance_feature(p, {"accuracy": est + 0.15}, POLICY)
    within = performance_feature(p, {"accuracy": est + 0.05}, POLICY)
    assert below["drifted"] and not within["drifted"]
    assert below["kind"] == "performance" and below["n"] == 500 and below["test"] == est + 0.15
    assert not performance_feature(p, None, POLICY)["drifted"]  # no test figure: no verdict


def test_the_drift_section_refuses_an_unknown_key_by_name(tmp_path) -> None:
    from pathlib import Path

    import yaml

    from core.params_schema import DriftThresholds
    from tasks.drift import load_thresholds

    repo = Path(__file__).resolve().parents[2]
    thresholds, policy = load_thresholds(repo)  # the shipped file
    assert thresholds == DriftThresholds(**{k: v for k, v in yaml.safe_load(
        (repo / "params.yaml").read_text())["drift"].items() if k != "performance"})
    assert policy.metric == "accuracy" and policy.drop == 0.1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"drift": {"min_samples": 5, "performance": {"dorp": 0.2}}}))
    with pytest.raises(ValueError, match=r"drift\.performance\.dorp: unknown key"):
        load_thresholds(tmp_path)
    path.write_text(yaml.safe_dump({"drift": {"psi_treshold": 0.2}}))
    with pytest.raises(ValueError, match=r"drift\.psi_treshold: unknown key"):
        load_thresholds(tmp_path)
    path.write_text(yaml.safe_dump({"drift": {"share_threshold": "a third"}}))
    with pytest.raises(ValueError, match=r"drift\.share_threshold: .*number.*'a third'"):
        load_thresholds(tmp_path)


def test_atc_reads_a_shift_that_the_mean_confidence_over_reads() -> None:
    """The threshold fit on held-out answers gives back their accuracy there; on a window
    whose answers grow unsure and wrong together (a shift), the share above it falls with
    the accuracy, where the mean confidence of a model still too sure of itself does not."""
    from models.confidence import atc_threshold, confidence_score

    held_p, held_y = calibrated_window(2000, 3.0, seed=3)
    threshold = atc_threshold(held_p, held_y)
    held_acc = realized(held_y, held_p.argmax(axis=1), 3)["accuracy"]
    assert (confidence_score(held_p) > threshold).mean() == pytest.approx(held_acc, abs=0.005)
    # the shift: the true classes come from a flatter model than the one that answers
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 1.2, (2000, 3))
    truth_p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    answered = np.exp(2 * logits) / np.exp(2 * logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in truth_p])
    real = realized(labels, answered.argmax(axis=1), 3)["accuracy"]
    atc = estimate(answered, POLICY, threshold)["accuracy"]["estimate"]
    cbpe = estimate(answered, POLICY)["accuracy"]["estimate"]
    assert cbpe - real > 0.1  # the over-confident mean confidence over-reads it
    assert abs(atc - real) < cbpe - real  # closer to what really happened
    feature = performance_feature(answered, {"accuracy": held_acc}, POLICY, threshold)
    assert feature["method"] == "atc" and feature["estimated"]["accuracy"]["estimate"] == atc
    assert performance_feature(answered, None, POLICY)["method"] == "cbpe"
    assert atc_threshold(held_p[:0], held_y[:0]) is None
