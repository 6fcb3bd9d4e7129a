"""The split of an observation: a fixed function of its content hash, pinned to literals.

``split_of`` is a promise to every dataset version ever built: an observation stays in its
split as the dataset grows, so test items never leak into training and metrics stay
comparable across versions. Tests that only compare ``split_of`` with itself would pass
after any change to the hash -> split mapping; these compare it with values recorded once.
"""

from __future__ import annotations

import hashlib

import pytest

from tasks.shards import SPLITS, split_of

RATIOS = (0.8, 0.1, 0.1)  # params.yaml's default split

# content hashes (sha256 of "observation-<n>") and their splits under RATIOS, recorded from
# the implementation on 2026-11-23; a change here moves items between splits in every
# existing dataset version: it is a new dataset, not a refactoring
PINNED = {
    "90b13c5e845787587d20da32f66c5094b1c5fa80de504c97017e9632d21fc270": "train",
    "7439b56cfbf42f1a52c68d25588badb76bfa03e5644d24dad83418184a80c2f1": "train",
    "02ad65e4251c35c6c4fa942e7a6f19892f75bc0555cf18c98a7499affd853a30": "train",
    "c91f51d309736c5ecef334c5eddc761d26fab848df0a5df1acfdeb9813d1d8be": "train",
    "f8872065f11909feaef2983f8a895cacdc6288ff7f1d29e3e15d797257322493": "train",
    "2c211332d40cf7797698f63f96bc0e0f7e770f6508504a95bf0373b408350b95": "val",
    "3620367257958ba31a1b52b88af53dc1f0e0fed222c07c3d3efe2f2c2e14e299": "val",
    "e751b236232f58dd55afedb21624f1fc92848ef6edba9ff92008e0a33177200c": "val",
    "8d6be222d7b81c0155b6adf4a284d35b00d822338378855132e38cadef00dcba": "test",
    "3f9e4298f1e6e661894b06854c6539ecbce11684310919778b618d400a1d225d": "test",
    "7ecf395e5d39136359dec7a2446169937fae69adb3af332f612bcf9bb16076d2": "test",
    "139e52c14ea51b36a1fb47c3b3730e8fed6cdfafc3754b11c46990ca383f2821": "test",
}

# the same ids under a bigger training share, recorded likewise: the three val items and two
# of the test items move one split towards train, nothing moves away from it
PINNED_90_5_5 = {
    **dict.fromkeys(list(PINNED)[:8], "train"),
    "8d6be222d7b81c0155b6adf4a284d35b00d822338378855132e38cadef00dcba": "val",
    "3f9e4298f1e6e661894b06854c6539ecbce11684310919778b618d400a1d225d": "val",
    "7ecf395e5d39136359dec7a2446169937fae69adb3af332f612bcf9bb16076d2": "test",
    "139e52c14ea51b36a1fb47c3b3730e8fed6cdfafc3754b11c46990ca383f2821": "test",
}

MANY = [hashlib.sha256(f"observation-{n}".encode()).hexdigest() for n in range(4000)]


def test_known_ids_keep_their_recorded_split() -> None:
    """The hash -> split mapping itself: any change to it fails here, whatever it is."""
    assert {h: split_of(h, RATIOS) for h in PINNED} == PINNED
    assert {h: split_of(h, (0.9, 0.05, 0.05)) for h in PINNED} == PINNED_90_5_5


def test_the_pinned_ids_cover_every_split() -> None:
    """Guards the pin itself: a fixture of training items only would pin almost nothing."""
    assert {s: list(PINNED.values()).count(s) for s in SPLITS} == {"train": 5, "val": 3,
                                                                   "test": 4}
    assert PINNED_90_5_5 != PINNED


@pytest.mark.parametrize(("before", "after"), [
    ((0.8, 0.1, 0.1), (0.9, 0.05, 0.05)),  # more training data
    ((0.7, 0.15, 0.15), (0.8, 0.1, 0.1)),
    ((0.8, 0.1, 0.1), (0.8, 0.15, 0.05)),  # a smaller test split, training untouched
    ((0.8, 0.1, 0.1), (0.85, 0.1, 0.05)),
])
def test_raising_the_cut_points_moves_items_only_towards_train(before, after) -> None:
    """``split_of`` compares one number per id with the cumulative ratios (the cut points
    train | val | test). When the cut points only rise (a bigger training share, or val
    taking from test) an item can only move to an earlier split: no training item leaves
    training and no val item becomes a test item, so a retuned ratio never puts an item a
    model was trained on into its evaluation. (The docstring promises only stability as the
    dataset grows; this pins the structure that gives the rest.)"""
    assert after[0] >= before[0] and after[0] + after[1] >= before[0] + before[1]
    order = {s: i for i, s in enumerate(SPLITS)}
    moved = 0
    for h in MANY:
        old, new = order[split_of(h, before)], order[split_of(h, after)]
        assert new <= old, (h, before, after)
        moved += new < old
    assert moved > 0  # the ratios differ enough that the claim was exercised
    if after[0] == before[0]:  # only val and test resized: train is exactly the same set
        assert ({h for h in MANY if split_of(h, before) == "train"}
                == {h for h in MANY if split_of(h, after) == "train"})


def test_the_ratios_are_the_shares_of_a_large_sample() -> None:
    """The cut points are the cumulative ratios: 4000 ids land within sampling error of them
    (three standard errors: about 0.019 for 80 %, 0.014 for 10 %)."""
    for ratios in ((0.8, 0.1, 0.1), (0.6, 0.3, 0.1)):
        splits = [split_of(h, ratios) for h in MANY]
        for split, ratio in zip(SPLITS, ratios, strict=True):
            assert splits.count(split) / len(MANY) == pytest.approx(ratio, abs=0.025)
