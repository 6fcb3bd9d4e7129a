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
