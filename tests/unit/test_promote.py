"""Promotion: the gates as a pure decision, and the policy each model gets from params.yaml."""

from pathlib import Path

import pytest
import yaml

from core.params_schema import PromotionPolicy
from tasks.gates import decide_promotion
from tasks.promote import load_policy

POLICY = PromotionPolicy(metric="macro_f1", floor=0.5, margin=0.02, max_slice_drop=0.1)


# a trivial predictor every model below beats: the gates here are the floor and the champion's
TRIVIAL = {"majority": {"overall": {"macro_f1": 0.0, "accuracy": 0.0, "mae": 1.0}}}


def report(value: float, slices: dict[str, float] | None = None) -> dict:
    return {"overall": {"macro_f1": value},
            "slices": {k: {"macro_f1": v} for k, v in (slices or {}).items()},
            "trivial": TRIVIAL}


def mae_report(value: float) -> dict:
    return {"overall": {"mae": value}, "slices": {}, "trivial": TRIVIAL}


def test_below_the_floor_is_never_promoted() -> None:
    d = decide_promotion(report(0.4), None, POLICY)
    assert not d.promote and "floor" in d.reason


def test_first_model_above_the_floor_is_promoted() -> None:
    d = decide_promotion(report(0.7), None, POLICY)
    assert d.promote and "no champion" in d.reason


def test_must_beat_the_champion_by_the_margin() -> None:
    assert not decide_promotion(report(0.81), report(0.80), POLICY).promote
    assert decide_promotion(report(0.83), report(0.80), POLICY).promote


def test_a_slice_regressing_past_the_bound_blocks_promotion() -> None:
    champion = report(0.80, {"device_type=drone": 0.9, "device_type=buoy": 0.7})
    worse = report(0.90, {"device_type=drone": 0.75, "device_type=buoy": 0.95})
    d = decide_promotion(worse, champion, POLICY)
    assert not d.promote and "device_type=drone" in d.reason
    fine = report(0.90, {"device_type=drone": 0.85, "device_type=buoy": 0.95})
    assert decide_promotion(fine, champion, POLICY).promote


def test_a_lower_is_better_metric_is_gated_the_other_way() -> None:
    mae = PromotionPolicy(metric="mae", higher_is_better=False, floor=0.15, margin=0.01)
    low = mae_report(0.05)
    assert not decide_promotion(mae_report(0.2), None, mae).promote
    assert decide_promotion(low, None, mae).promote
    assert decide_promotion(low, mae_report(0.08), mae).promote
    d = decide_promotion(low, mae_report(0.055), mae)
    assert not d.promote and "margin" in d.reason


def write_params(tmp_path: Path, promote: dict) -> Path:
    """A project whose params.yaml has this ``promote`` section: the real file's layout, our
    values."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"datasets": {}, "promote": promote}))
    return tmp_path


# shared defaults that differ from the dataclass's, so a loader ignoring the file shows
DEFAULTS = {"metric": "accuracy", "higher_is_better": True, "floor": 0.6, "margin": 0.03,
            "max_slice_drop": 0.07}


def test_params_yaml_gives_each_model_its_policy(tmp_path: Path) -> None:
    """A model's ``per_model`` entry overrides the shared gates, key by key; a model without
    one, or one overriding only some keys, keeps the shared values for the rest."""
    params = write_params(tmp_path, {**DEFAULTS, "per_model": {
        "water-quality": {"metric": "mae", "higher_is_better": False, "floor": 0.15,
                          "margin": 0.002, "max_slice_drop": 0.25},
        "algae-bloom": {"margin": 0.05},
    }})
    assert load_policy(params, "water-quality") == PromotionPolicy(
        metric="mae", higher_is_better=False, floor=0.15, margin=0.002, max_slice_drop=0.25)
    assert load_policy(params, "plastic-detector") == PromotionPolicy(**DEFAULTS)
    assert load_policy(params, "algae-bloom") == PromotionPolicy(**{**DEFAULTS, "margin": 0.05})


def test_the_overridden_policy_is_the_one_that_gates(tmp_path: Path) -> None:
    """The same reports pass one model's gates and fail another's: the override is used."""
    shared = {**DEFAULTS, "metric": "macro_f1"}  # floor 0.6, margin 0.03
    params = write_params(tmp_path, {**shared, "per_model": {
        "plastic-detector": {"floor": 0.8, "margin": 0.001}}})
    challenger, champion = report(0.72), report(0.70)
    assert decide_promotion(challenger, None, load_policy(params, "algae-bloom")).promote
    strict = decide_promotion(challenger, None, load_policy(params, "plastic-detector"))
    assert not strict.promote and "floor 0.800" in strict.reason
    params = write_params(tmp_path, {**shared, "per_model": {
        "plastic-detector": {"floor": 0.5, "margin": 0.001}}})
    assert decide_promotion(challenger, champion, load_policy(params, "plastic-detector")).promote
    assert not decide_promotion(challenger, champion, load_policy(params, "algae-bloom")).promote


def test_no_per_model_section_means_the_shared_policy_for_all(tmp_path: Path) -> None:
    """``per_model`` is optional, and an empty one (``per_model:``) is not an error."""
    params = write_params(tmp_path, DEFAULTS)
    assert load_policy(params, "water-quality") == PromotionPolicy(**DEFAULTS)
    empty = write_params(tmp_path, {**DEFAULTS, "per_model": None})
    assert load_policy(empty, "water-quality") == PromotionPolicy(**DEFAULTS)


@pytest.mark.parametrize("model", ["water-quality", "plastic-detector"])
def test_an_unknown_per_model_key_is_refused_naming_the_key_and_the_model(
        tmp_path: Path, model: str) -> None:
    """A misspelt gate must stop the stage, for every model: promoting under a gate the
    operator did not mean is worse than not promoting."""
    params = write_params(tmp_path, {**DEFAULTS, "per_model": {
        "water-quality": {"metric": "mae", "flor": 0.9, "max_slice_dorp": 0.2}}})
    with pytest.raises(ValueError, match=r"promote\.per_model\.water-quality\.flor: unknown key; "
                                         r"promote\.per_model\.water-quality\.max_slice_dorp: "
                                         r"unknown key"):
        load_policy(params, model)


def test_an_unknown_shared_key_or_a_malformed_entry_is_refused(tmp_path: Path) -> None:
    """The shared gates apply to every model, so a typo there is refused too; an entry that
    is not a mapping says so instead of failing inside the dataclass."""
    params = write_params(tmp_path, {**DEFAULTS, "margn": 0.2})
    with pytest.raises(ValueError, match=r"promote\.margn: unknown key"):
        load_policy(params, "algae-bloom")
    params = write_params(tmp_path, {**DEFAULTS, "per_model": {"water-quality": 0.15}})
    with pytest.raises(ValueError, match=r"promote\.per_model\.water-quality: Input should be a "
                                         r"valid dictionary.*\(got 0\.15\)"):
        load_policy(params, "water-quality")
    params = write_params(tmp_path, {**DEFAULTS, "per_model": ["water-quality"]})
    with pytest.raises(ValueError, match=r"promote\.per_model: Input should be a valid "
                                         r"dictionary"):
        load_policy(params, "water-quality")


def test_the_repository_params_yaml_loads_for_every_model() -> None:
    """The shipped file: water-quality is gated on MAE (lower is better), the others on the
    shared section as written."""
    params = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((params / "params.yaml").read_text())
    defaults = PromotionPolicy(**{k: v for k, v in doc["promote"].items() if k != "per_model"})
    others = sorted(set(doc["datasets"]) - {"water-quality"})
    assert "plastic-detector" in others
    for model in others:
        assert load_policy(params, model) == defaults, model
    water = load_policy(params, "water-quality")
    assert (water.metric, water.higher_is_better) == ("mae", False)
    assert water.max_slice_drop == defaults.max_slice_drop


def examples_report(metric: str, y_true, y_pred, classes=("a", "b", "c")) -> dict:
    """A report as ``report_for`` writes it: overall metric, no slices, the examples."""
    import numpy as np

    from tasks.gates import sample_metric

    def one(pred):
        return {"overall": {metric: sample_metric(metric, t, pred, len(classes))}, "slices": {},
                "classes": list(classes),
                "examples": {"y_true": t.tolist(), "y_pred": pred.tolist()}}

    t, p = np.asarray(y_true), np.asarray(y_pred)
    return {**one(p), "trivial": {"majority": one(np.zeros_like(t))}}


def answers(y_true: list[int], right: int) -> list[int]:
    """The labels, with every example past the first ``right`` answered wrongly."""
    return [y if i < right else (y + 1) % 3 for i, y in enumerate(y_true)]


LABELS = [i % 3 for i in range(60)]  # a small split: 60 examples, 3 classes
BOOTSTRAP = [
    # (case, metric, champion right, challenger right, margin, promoted)
    ("one more right of 60 is inside the noise", "accuracy", 40, 41, 0.0, False),
    ("a third more right is a gain", "accuracy", 30, 50, 0.01, True),
    ("macro-F1: one more right is noise", "macro_f1", 40, 41, 0.0, False),
    ("macro-F1: clearly better", "macro_f1", 20, 55, 0.01, True),
    ("clearly better, but not by a margin of 0.5", "accuracy", 30, 50, 0.5, False),
    ("worse is refused", "accuracy", 50, 30, 0.0, False),
]


@pytest.mark.parametrize(("case", "metric", "old", "new", "margin", "promoted"), BOOTSTRAP,
                         ids=[c[0] for c in BOOTSTRAP])
def test_the_gain_must_clear_the_margin_with_confidence(case, metric, old, new, margin,
                                                        promoted) -> None:
    policy = PromotionPolicy(metric=metric, floor=0.0, margin=margin, max_slice_drop=1.0)
    champion = examples_report(metric, LABELS, answers(LABELS, old))
    challenger = examples_report(metric, LABELS, answers(LABELS, new))
    decision = decide_promotion(challenger, champion, policy)
    assert decision.promote is promoted, decision.reason
    assert "lower bound" in decision.reason


def test_the_bound_sits_below_the_point_gain_and_is_reproducible() -> None:
    from tasks.gates import gain_lower_bound

    policy = PromotionPolicy(metric="accuracy", floor=0.0, margin=0.0)
    champion = examples_report("accuracy", LABELS, answers(LABELS, 40))
    challenger = examples_report("accuracy", LABELS, answers(LABELS, 48))
    low = gain_lower_bound(challenger, champion, policy)
    assert 0.0 < low < 8 / 60 and low == gain_lower_bound(challenger, champion, policy)
    assert gain_lower_bound(challenger, champion,
                            PromotionPolicy(metric="accuracy", confidence=0.99)) < low


def test_a_regression_gain_is_bootstrapped_on_mae() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 1, (50, 2))
    near, far = truth + rng.normal(0, 0.02, truth.shape), truth + rng.normal(0, 0.2, truth.shape)
    policy = PromotionPolicy(metric="mae", higher_is_better=False, floor=1.0, margin=0.002)

    def rep(pred, trivial=True):
        return {"overall": {"mae": float(np.abs(pred - truth).mean())}, "slices": {},
                "examples": {"y_true": truth.tolist(), "y_pred": pred.tolist()},
                **({"trivial": {"mean": rep(np.full_like(truth, 0.5), False)}}
                   if trivial else {})}

    assert decide_promotion(rep(near), rep(far), policy).promote
    assert not decide_promotion(rep(far), rep(near), policy).promote
    slightly = near + rng.normal(0, 0.001, truth.shape)
    assert not decide_promotion(rep(slightly), rep(near), policy).promote


def test_reports_on_different_splits_fall_back_to_the_point_gain() -> None:
    policy = PromotionPolicy(metric="accuracy", floor=0.0, margin=0.01)
    champion = examples_report("accuracy", LABELS, answers(LABELS, 40))
    other = list(reversed(LABELS))
    challenger = examples_report("accuracy", other, answers(other, 41))
    decision = decide_promotion(challenger, champion, policy)
    assert decision.promote and "lower bound" not in decision.reason
