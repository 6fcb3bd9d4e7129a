from tasks.promote import PromotionPolicy, decide_promotion

POLICY = PromotionPolicy(metric="macro_f1", floor=0.5, margin=0.02, max_slice_drop=0.1)


def report(value: float, slices: dict[str, float] | None = None) -> dict:
    return {"overall": {"macro_f1": value},
            "slices": {k: {"macro_f1": v} for k, v in (slices or {}).items()}}


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
    low = {"overall": {"mae": 0.05}, "slices": {}}
    assert not decide_promotion({"overall": {"mae": 0.2}, "slices": {}}, None, mae).promote
    assert decide_promotion(low, None, mae).promote
    assert decide_promotion(low, {"overall": {"mae": 0.08}, "slices": {}}, mae).promote
    d = decide_promotion(low, {"overall": {"mae": 0.055}, "slices": {}}, mae)
    assert not d.promote and "margin" in d.reason


def test_params_yaml_gives_each_model_its_policy() -> None:
    from pathlib import Path

    from tasks.promote import load_policy

    params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert load_policy(params, "plastic-detector").metric == "macro_f1"
    water = load_policy(params, "water-quality")
    assert (water.metric, water.higher_is_better) == ("mae", False)
    assert water.max_slice_drop == load_policy(params, "algae-bloom").max_slice_drop
