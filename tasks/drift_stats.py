"""The two-sample tests drift is made of, pure functions over arrays.

Continuous features: PSI over the reference's quantile bins and a two-sample KS test;
categories: a chi-square test; shares (an LLM tag on or off): a two-proportion z-test; image
embeddings: MMD with an RBF kernel and a permutation test. A test flags drift only when the
difference is both significant and large enough to matter, since on thousands of rows any
difference is "significant".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

EPS = 1e-4
KS_MIN_EFFECT = 0.1  # KS statistic: the largest gap between the two CDFs
SHARE_MIN_EFFECT = 0.1  # absolute change of a tag's share
MIX_MIN_EFFECT = 0.1  # total variation distance between two category mixes


def numeric_reference(values: np.ndarray, sample: int, bins: int = 10) -> dict[str, Any]:
    """What a numeric check compares against: a value sample, quantile edges, mean and std."""
    step = max(1, len(values) // sample)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
    return {"sample": [round(float(v), 6) for v in values[::step][:sample]],
            "edges": [float(e) for e in edges], "mean": float(values.mean()),
            "std": float(values.std())}


def psi(edges: list[float], reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index over the reference's quantile bins (open-ended outer bins)."""
    inner = np.asarray(edges[1:-1], dtype=float)
    ref = np.bincount(np.searchsorted(inner, reference, side="right"), minlength=len(inner) + 1)
    cur = np.bincount(np.searchsorted(inner, current, side="right"), minlength=len(inner) + 1)
    ref_p = np.clip(ref / max(ref.sum(), 1), EPS, None)
    cur_p = np.clip(cur / max(cur.sum(), 1), EPS, None)
    return float(np.sum((cur_p - ref_p) * np.log(cur_p / ref_p)))


def numeric_drift(ref: dict[str, Any], current: np.ndarray, ks_pvalue: float,
                  psi_threshold: float) -> dict[str, Any]:
    """PSI and KS of ``current`` against a :func:`numeric_reference`."""
    sample = np.asarray(ref["sample"], dtype=float)
    ks = stats.ks_2samp(sample, current, method="asymp")
    statistic, pvalue = float(ks.statistic), float(ks.pvalue)
    value = psi(ref["edges"], sample, current)
    drifted = value > psi_threshold or (pvalue < ks_pvalue and statistic > KS_MIN_EFFECT)
    return {"kind": "numeric", "psi": round(value, 4), "ks_stat": round(statistic, 4),
            "ks_pvalue": pvalue, "ref_mean": round(ref["mean"], 4),
            "cur_mean": round(float(current.mean()), 4), "drifted": bool(drifted)}


def categorical_drift(ref_counts: dict[str, int], current: pd.Series, pvalue: float) -> dict:
    """Chi-square of the current category counts against the reference's proportions, and
    the total variation distance between the two mixes (the share that moved)."""
    categories = sorted(set(ref_counts) | set(current.unique()))
    ref = np.array([ref_counts.get(c, 0) for c in categories], dtype=float)
    cur = current.value_counts().reindex(categories, fill_value=0).to_numpy(dtype=float)
    expected = np.clip(ref / ref.sum(), EPS, None)
    expected = expected / expected.sum() * cur.sum()
    chi = stats.chisquare(cur, expected)
    tvd = float(0.5 * np.abs(cur / cur.sum() - ref / ref.sum()).sum())
    return {"kind": "categorical", "chi2": round(float(chi.statistic), 3),
            "pvalue": float(chi.pvalue), "tvd": round(tvd, 4),
            "ref_top": categories[int(ref.argmax())], "cur_top": categories[int(cur.argmax())],
            "drifted": bool(chi.pvalue < pvalue and tvd > MIX_MIN_EFFECT)}


def share_drift(ref_hits: int, ref_n: int, cur_hits: int, cur_n: int, pvalue: float) -> dict:
    """Two-proportion z-test of a share (observations carrying a tag), with a minimum effect."""
    p_ref, p_cur = ref_hits / ref_n, cur_hits / cur_n
    pooled = (ref_hits + cur_hits) / (ref_n + cur_n)
    se = np.sqrt(max(pooled * (1 - pooled), EPS) * (1 / ref_n + 1 / cur_n))
    p = float(2 * stats.norm.sf(abs(p_cur - p_ref) / se))
    return {"kind": "share", "ref_share": round(p_ref, 4), "cur_share": round(p_cur, 4),
            "pvalue": p, "drifted": bool(p < pvalue and abs(p_cur - p_ref) > SHARE_MIN_EFFECT)}


def mmd_permutation_test(reference: np.ndarray, current: np.ndarray, *, max_sample: int = 1000,
                         permutations: int = 200, seed: int = 0) -> tuple[float, float, int, int]:
    """MMD² (RBF kernel, median-distance bandwidth) between two sets of embeddings and its
    permutation p-value; each side is first subsampled to ``max_sample`` rows, so the cost is
    bounded whatever the window holds. Returns (mmd², p-value, n_reference, n_current)."""
    rng = np.random.default_rng(seed)
    x = _subsample(np.asarray(reference, dtype=np.float32), max_sample, rng)
    y = _subsample(np.asarray(current, dtype=np.float32), max_sample, rng)
    z = np.concatenate([x, y])
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * (z @ z.T), 0)
    bandwidth = float(np.median(d2[np.triu_indices(len(z), k=1)])) or 1.0
    kernel = np.exp(-d2 / bandwidth)
    n, m = len(x), len(y)
    base = np.concatenate([np.full(n, 1 / n), np.full(m, -1 / m)]).astype(np.float32)
    signs = np.stack([base] + [rng.permutation(base) for _ in range(permutations)], axis=1)
    stats_ = np.einsum("ip,ip->p", kernel @ signs, signs)  # a^T K a for every column a
    observed = float(stats_[0])
    p = float((1 + np.sum(stats_[1:] >= observed)) / (1 + permutations))
    return observed, p, n, m


def _subsample(a: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return a if len(a) <= k else a[rng.choice(len(a), k, replace=False)]
