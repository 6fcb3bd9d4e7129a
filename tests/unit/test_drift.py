from datetime import UTC, datetime

import numpy as np
import pandas as pd

from core.params_schema import DriftThresholds
from oceanml.simulator import simulate
from tasks.drift import compute_drift
from tasks.drift_stats import psi
from tasks.shards import reference_stats

END = datetime(2026, 11, 20, tzinfo=UTC)


def frame(scenario: str, seed: int) -> pd.DataFrame:
    rows = [{"device_type": o.device.device_type, **o.readings, "llm_tags": "",
             "content_hash": f"{seed}-{k}"}
            for k, o in enumerate(simulate(days=2, devices=6, per_day=40, scenario=scenario,
                                           seed=seed, end=END))]
    df = pd.DataFrame(rows)
    for f in ("brightness", "contrast", "green_ratio", "saturation"):
        df[f"image_{f}"] = np.nan
    return df


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    edges = list(np.quantile(ref, np.linspace(0, 1, 11)))
    assert psi(edges, ref, rng.normal(0, 1, 5000)) < 0.02
    assert psi(edges, ref, rng.normal(1, 1, 5000)) > 0.25


def test_same_sea_another_week_is_not_drift() -> None:
    ref = reference_stats(frame("normal", 0), sample=2000)
    report = compute_drift(ref, frame("normal", 1), DriftThresholds())
    assert not report.drifted, report.reason


def test_a_storm_is_drift_and_names_the_features() -> None:
    ref = reference_stats(frame("normal", 0), sample=2000)
    report = compute_drift(ref, frame("storm", 1), DriftThresholds())
    assert report.drifted
    assert report.features["turbidity_ntu"]["drifted"]
    assert report.features["salinity_psu"]["drifted"]
    assert report.features["turbidity_ntu"]["psi"] > 1


def test_a_bloom_drifts_chlorophyll() -> None:
    ref = reference_stats(frame("normal", 0), sample=2000)
    report = compute_drift(ref, frame("bloom", 1), DriftThresholds())
    assert report.features["chlorophyll_ug_l"]["drifted"] and report.drifted


def test_too_few_recent_observations_give_no_verdict() -> None:
    ref = reference_stats(frame("normal", 0), sample=2000)
    report = compute_drift(ref, frame("storm", 1).head(10), DriftThresholds(min_samples=50))
    assert not report.drifted and report.verdict == "insufficient"
    assert report.reason.startswith("not enough recent data: 10 observations")


def test_tag_shares_drift_when_a_tag_spreads_and_only_then() -> None:
    rng = np.random.default_rng(3)
    ref_frame = frame("normal", 0)
    ref_frame["llm_tags"] = np.where(rng.random(len(ref_frame)) < 0.15, "rough-sea,clear-water",
                                     "clear-water")
    ref = reference_stats(ref_frame, sample=2000)

    def window(share: float) -> pd.DataFrame:
        current = frame("normal", 1)
        current["llm_tags"] = [["rough-sea", "clear-water"] if r < share else ["clear-water"]
                               for r in rng.random(len(current))]
        return current

    spread = compute_drift(ref, window(0.45), DriftThresholds()).features
    assert spread["tag:rough-sea"]["drifted"] and not spread["tag:clear-water"]["drifted"]
    calm = compute_drift(ref, window(0.15), DriftThresholds()).features
    assert not calm["tag:rough-sea"]["drifted"]
