"""The two-sample tests drift is made of: each flags a real shift and stays calm without one."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.drift_stats import categorical_drift, mmd_permutation_test, share_drift


def test_mmd_tells_a_moved_cloud_of_embeddings_from_another_draw_of_the_same() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (400, 32))
    _, same_p, n_ref, n_cur = mmd_permutation_test(reference, rng.normal(0, 1, (300, 32)))
    moved, moved_p, _, _ = mmd_permutation_test(reference, rng.normal(0.4, 1, (300, 32)))
    assert (n_ref, n_cur) == (400, 300)
    assert same_p > 0.05 and moved_p < 0.01 and moved > 0


def test_mmd_reads_a_bounded_sample_of_each_side() -> None:
    rng = np.random.default_rng(1)
    _, _, n_ref, n_cur = mmd_permutation_test(rng.normal(size=(5000, 8)),
                                              rng.normal(size=(3000, 8)), max_sample=500,
                                              permutations=50)
    assert (n_ref, n_cur) == (500, 500)


def test_a_tag_share_drifts_only_when_the_change_is_significant_and_large() -> None:
    assert share_drift(100, 1000, 400, 1000, 0.01)["drifted"]  # 10% -> 40%
    small = share_drift(10_000, 100_000, 10_600, 100_000, 0.01)  # 10% -> 10.6%: significant
    assert small["pvalue"] < 0.01 and not small["drifted"]
    assert not share_drift(100, 1000, 110, 1000, 0.01)["drifted"]


def test_a_category_mix_drifts_only_when_enough_of_it_moved() -> None:
    reference = {"buoy": 5000, "drone": 3000, "camera": 2000}
    moved = categorical_drift(reference, pd.Series(["buoy"] * 200 + ["drone"] * 700
                                                   + ["camera"] * 100), 0.01)
    assert moved["drifted"] and moved["tvd"] == 0.4 and moved["cur_top"] == "drone"
    nudged = categorical_drift(reference, pd.Series(["buoy"] * 5400 + ["drone"] * 2800
                                                    + ["camera"] * 1800), 0.01)
    assert nudged["pvalue"] < 0.01 and nudged["tvd"] < 0.1 and not nudged["drifted"]
