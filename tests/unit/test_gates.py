"""The gates against the trivial predictors, table-driven, on reports the evaluation code
makes (:func:`tasks.evaluate.scored_report` with :mod:`tasks.baselines`' predictions)."""

from __future__ import annotations

import numpy as np
import pytest

from core.params_schema import PromotionPolicy
from models.zoo import get_spec
from tasks.baselines import trivial_predictions
from tasks.evaluate import scored_report
from tasks.gates import decide_promotion, floor_check

CLS = get_spec("plastic-detector")  # none / light / severe
REG = get_spec("water-quality")  # five targets
F1 = PromotionPolicy(metric="macro_f1", floor=0.0, margin=0.01)
MAE = PromotionPolicy(metric="mae", higher_is_better=False, floor=1.0, margin=0.002)
SLICES = {"device_type": ["buoy", "drone"] * 60}


def classification_report(preds: np.ndarray, truth: np.ndarray, train: np.ndarray) -> dict:
    report = scored_report(CLS, truth, preds, SLICES)
    report["trivial"] = {name: scored_report(CLS, truth, p, SLICES)
                         for name, p in trivial_predictions(CLS, train, len(truth)).items()}
    return report


def regression_report(preds: np.ndarray, truth: np.ndarray, train: np.ndarray) -> dict:
    report = scored_report(REG, truth, preds, SLICES)
    report["trivial"] = {name: scored_report(REG, truth, p, SLICES)
                         for name, p in trivial_predictions(REG, train, len(truth)).items()}
    return report


RNG = np.random.default_rng(3)
TRAIN_CLS = RNG.choice(3, 600, p=[0.5, 0.3, 0.2])
TRUTH_CLS = RNG.choice(3, 120, p=[0.5, 0.3, 0.2])
TRAIN_REG = RNG.uniform(0.2, 0.8, (600, REG.num_outputs))
TRUTH_REG = RNG.uniform(0.2, 0.8, (120, REG.num_outputs))


def noisy(truth: np.ndarray, wrong: float, seed: int) -> np.ndarray:
    """The labels with a share ``wrong`` of them replaced by another class."""
    rng = np.random.default_rng(seed)
    flip = rng.random(len(truth)) < wrong
    return np.where(flip, (truth + rng.integers(1, 3, len(truth))) % 3, truth)


CLASSIFIERS = [
    # (case, predictions, promoted)
    ("the majority class, always", np.zeros(120, dtype=int), False),
    ("guessing with the class prior", RNG.choice(3, 120, p=[0.5, 0.3, 0.2]), False),
    ("labels shuffled: right only by chance", RNG.permutation(TRUTH_CLS), False),
    ("clearly better than any trivial answer", noisy(TRUTH_CLS, 0.15, 1), True),
]


@pytest.mark.parametrize(("case", "preds", "promoted"), CLASSIFIERS,
                         ids=[c[0] for c in CLASSIFIERS])
def test_a_first_classifier_must_beat_the_trivial_predictors(case, preds, promoted) -> None:
    decision = decide_promotion(classification_report(preds, TRUTH_CLS, TRAIN_CLS), None, F1)
    assert decision.promote is promoted, decision.reason
    trivial = next(c for c in decision.checks if c.name == "trivial")
    assert trivial.passed is promoted and trivial.threshold == 0.0
    assert [f["name"] for f in decision.interval["trivial"]] == ["majority", "prior"]


def test_a_regressor_answering_the_train_mean_is_refused_on_every_gate() -> None:
    mean = np.tile(TRAIN_REG.mean(axis=0), (120, 1))
    decision = decide_promotion(regression_report(mean, TRUTH_REG, TRAIN_REG), None, MAE)
    assert not decision.promote
    assert decision.checks[0].passed  # the floor (MAE <= 1) alone would have let it through
    by_name = {c.name: c for c in decision.checks}
    assert not by_name["trivial"].passed
    assert [n for n, c in by_name.items() if n.startswith("r2 ")] == [
        f"r2 {t}" for t in REG.outputs]
    assert not any(c.passed for n, c in by_name.items() if n.startswith("r2 "))


def test_a_regressor_must_explain_every_target() -> None:
    """Good on three targets, the mean on the fourth: better than the mean overall, refused."""
    rng = np.random.default_rng(5)
    preds = TRUTH_REG + rng.normal(0, 0.03, TRUTH_REG.shape)
    preds[:, 3] = TRAIN_REG[:, 3].mean()
    decision = decide_promotion(regression_report(preds, TRUTH_REG, TRAIN_REG), None, MAE)
    by_name = {c.name: c for c in decision.checks}
    assert by_name["trivial"].passed and not by_name["r2 ph_balance"].passed
    assert all(by_name[f"r2 {t}"].passed for t in REG.outputs if t != "ph_balance")
    assert not decision.promote and decision.reason == by_name["r2 ph_balance"].detail
    good = TRUTH_REG + rng.normal(0, 0.03, TRUTH_REG.shape)
    assert decide_promotion(regression_report(good, TRUTH_REG, TRAIN_REG), None, MAE).promote


def test_every_check_says_what_happened_in_both_outcomes() -> None:
    """The details are pinned: a passed check never reads as a failure, nor the reverse."""
    assert floor_check(0.7, PromotionPolicy(floor=0.5)).detail == \
        "macro_f1 0.700 is at or above the floor 0.500"
    assert floor_check(0.4, PromotionPolicy(floor=0.5)).detail == \
        "macro_f1 0.400 is below the floor 0.500"
    assert floor_check(0.1, MAE).detail == "mae 0.100 is at or below the ceiling 1.000"
    assert floor_check(1.2, MAE).detail == "mae 1.200 is above the ceiling 1.000"

    good = decide_promotion(classification_report(noisy(TRUTH_CLS, 0.15, 1), TRUTH_CLS,
                                                  TRAIN_CLS), None, F1)
    bad = decide_promotion(classification_report(np.zeros(120, dtype=int), TRUTH_CLS,
                                                 TRAIN_CLS), None, F1)
    passed, failed = (next(c for c in d.checks if c.name == "trivial") for d in (good, bad))
    assert " beats the prior predictor's " in passed.detail
    assert passed.detail.endswith("lower bound " + f"{passed.value:+.3f} is above 0)")
    assert " does not beat the " in failed.detail and "is not above 0" in failed.detail
    assert good.reason.startswith("no champion yet; macro_f1 ")
    assert "passes the bar 0.000 and beats the prior predictor's" in good.reason
    assert bad.reason == failed.detail

    champion = classification_report(noisy(TRUTH_CLS, 0.35, 2), TRUTH_CLS, TRAIN_CLS)
    better = classification_report(noisy(TRUTH_CLS, 0.05, 3), TRUTH_CLS, TRAIN_CLS)
    up, down = (decide_promotion(a, b, F1) for a, b in ((better, champion), (champion, better)))
    gain_up, gain_down = (next(c for c in d.checks if c.name == "gain_lower_bound")
                          for d in (up, down))
    assert gain_up.passed and " clears the margin 0.010" in gain_up.detail
    assert not gain_down.passed and " does not clear the margin 0.010" in gain_down.detail
    slice_up = next(c for c in up.checks if c.name.startswith("slice "))
    slice_down = next(c for c in down.checks if c.name.startswith("slice "))
    assert slice_up.passed and slice_up.detail.endswith("within 0.10")
    assert not slice_down.passed and slice_down.detail.endswith("regresses more than 0.10")

    rng = np.random.default_rng(5)
    preds = TRUTH_REG + rng.normal(0, 0.03, TRUTH_REG.shape)
    preds[:, 3] = TRAIN_REG[:, 3].mean()
    checks = {c.name: c for c in decide_promotion(
        regression_report(preds, TRUTH_REG, TRAIN_REG), None, MAE).checks}
    assert checks["r2 clarity"].detail.endswith(
        "is above 0 (the model explains it better than a constant)")
    assert checks["r2 ph_balance"].detail.endswith(
        "is not above 0 (the model does not explain it better than a constant)")


def test_an_evaluation_without_trivial_figures_is_never_promoted() -> None:
    decision = decide_promotion({"overall": {"macro_f1": 0.9}, "slices": {}}, None, F1)
    assert not decision.promote
    assert decision.reason == ("the evaluation has no trivial predictor's figures to compare "
                               "with (evaluate the version again)")


def test_the_trivial_predictors_are_fit_on_the_train_split() -> None:
    train = np.array([2, 2, 2, 1, 0])
    out = trivial_predictions(CLS, train, 1000)
    assert (out["majority"] == 2).all()
    shares = np.bincount(out["prior"], minlength=3) / 1000
    assert shares == pytest.approx([0.2, 0.2, 0.6], abs=0.05)
    assert (out["prior"] == trivial_predictions(CLS, train, 1000)["prior"]).all()  # seeded
    mean = trivial_predictions(REG, TRAIN_REG, 3)["mean"]
    assert mean.shape == (3, REG.num_outputs) and mean[0] == pytest.approx(TRAIN_REG.mean(axis=0))
    with pytest.raises(ValueError, match="train split is empty"):
        trivial_predictions(CLS, np.array([], dtype=int), 10)
