"""Drift check speed: OceanML's drift check against Evidently's data-drift preset, same frames.

Two frames of N rows (default 1 000 000) x 20 features: the six sensor readings, the four
image statistics and the shares of ten LLM tags, drawn like the simulator's sea. The current
frame carries a planted shift in three features (turbidity x3, salinity -4 PSU, the
``rough-sea`` tag from 15 % to 45 % of observations). In one process, on the same frames:

- ``oceanml``: what the drift stage runs, as it ships: :func:`tasks.shards.reference_stats`
  over the reference frame (the dataset stage stores it) and :func:`tasks.drift.compute_drift`
  of the current frame against it, with ``params.yaml``'s thresholds; tags as the lists the
  ``observations`` table holds;
- ``evidently``: ``Report([DataDriftPreset()])`` over the same two frames, the tags as 0/1
  columns (the form Evidently reads), its default tests (normed Wasserstein for numeric
  columns over 1 000 rows, Jensen-Shannon for the binary ones), the result read back.

Each side runs ``--rounds`` times, alternating, after an untimed warm-up; medians reported.
Goals: at least 10x faster than Evidently, the same drifted features found, under 3 s on 2
cores. Also timed: the embedding check (MMD with a permutation test, the shipped bounded
sample) on 10 000 vs 10 000 embeddings of ResNet-18's width (512).

    .venv/bin/python bench/drift.py            # 1 000 000 rows (evidently: the bench extra)
    .venv/bin/python bench/drift.py --quick    # 20 000 rows, one round
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TAGS = ("clear-water", "turbid-water", "green-water", "algae-bloom", "low-light",
        "bright-glare", "rough-sea", "calm-sea", "warm-water", "cold-water")
SHIFTED = {"turbidity_ntu", "salinity_psu", "tag:rough-sea"}


def sea(rows: int, seed: int, shifted: bool) -> pd.DataFrame:
    """Readings, image statistics and tag lists of ``rows`` observations."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "water_temp_c": rng.normal(17, 3, rows),
        "salinity_psu": rng.normal(35 - (4 if shifted else 0), 0.8, rows),
        "ph": rng.normal(8.1, 0.08, rows),
        "turbidity_ntu": rng.lognormal(np.log(4 * (3 if shifted else 1)), 0.5, rows),
        "chlorophyll_ug_l": rng.lognormal(np.log(2), 0.6, rows),
        "dissolved_oxygen_mg_l": rng.normal(7.5, 0.6, rows),
        "image_brightness": rng.beta(5, 4, rows),
        "image_contrast": rng.gamma(4, 0.02, rows),
        "image_green_ratio": rng.normal(0.36, 0.03, rows),
        "image_saturation": rng.beta(3, 6, rows),
        "device_type": rng.choice(["buoy", "drone", "camera"], rows, p=[0.5, 0.3, 0.2]),
    })
    shares = {tag: 0.15 for tag in TAGS} | ({"rough-sea": 0.45} if shifted else {})
    hits = np.stack([rng.random(rows) < shares[t] for t in TAGS], axis=1)
    names = np.array(TAGS, dtype=object)
    frame["llm_tags"] = [list(names[row]) for row in hits]
    for i, tag in enumerate(TAGS):
        frame[f"tag_{tag}"] = hits[:, i].astype(np.int8)
    frame["content_hash"] = np.arange(rows).astype(str)
    return frame


def oceanml_check(reference: pd.DataFrame, current: pd.DataFrame) -> set[str]:
    """What the drift stage runs: the stored reference, then the comparison. Drifted names."""
    from tasks.drift import compute_drift, load_thresholds
    from tasks.shards import reference_stats

    thresholds, _ = load_thresholds(REPO)
    ref = reference.assign(llm_tags=reference["llm_tags"].map(",".join))  # as manifests hold
    stats = reference_stats(ref, sample=2000)
    report = compute_drift(stats, current, thresholds)
    return {name for name, f in report.features.items() if f["drifted"]}


def evidently_check(reference: pd.DataFrame, current: pd.DataFrame) -> set[str]:
    """Evidently's data-drift preset over the same features. Drifted names, in OceanML's."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric = [c for c in reference if c.startswith(("image_", "tag_")) or c in SENSORS]
    definition = DataDefinition(numerical_columns=[c for c in numeric if not c.startswith("tag_")],
                                categorical_columns=["device_type",
                                                     *(c for c in numeric if c.startswith("tag_"))])
    columns = [*numeric, "device_type"]
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition))
    drifted = set()
    for test in snapshot.dict()["tests"]:
        column = (test.get("metric_config") or {}).get("params", {}).get("column")
        status = getattr(test["status"], "value", test["status"])
        if column and status == "FAIL":
            drifted.add(f"tag:{column[4:]}" if column.startswith("tag_") else column)
    return drifted


SENSORS = ("water_temp_c", "salinity_psu", "ph", "turbidity_ntu", "chlorophyll_ug_l",
           "dissolved_oxygen_mg_l")


def import_evidently() -> None:
    """Evidently 0.7 imports a helper pandas 3 removed (used only by a legacy check, never by
    the drift preset); give it back before importing, and keep its telemetry off."""
    os.environ["DO_NOT_TRACK"] = "1"
    import pandas.core.dtypes.common as common

    if not hasattr(common, "infer_dtype_from_object"):
        common.infer_dtype_from_object = lambda dtype: pd.api.types.pandas_dtype(dtype).type
    warnings.filterwarnings("ignore")
    import evidently  # noqa: F401


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def embedding_check(n: int = 10_000, width: int = 512) -> dict[str, float]:
    """The shipped MMD check on n vs n embeddings (a shifted cloud): seconds and p-value."""
    from core.params_schema import DriftThresholds
    from tasks.drift_stats import mmd_permutation_test

    t = DriftThresholds()
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (n, width)).astype(np.float32)
    current = rng.normal(0.1, 1, (n, width)).astype(np.float32)
    seconds, (_, p, n_ref, n_cur) = timed(
        lambda: mmd_permutation_test(reference, current, max_sample=t.embedding_sample,
                                     permutations=t.permutations))
    return {"seconds": seconds, "pvalue": p, "sample_per_side": n_ref, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 000 rows, one round")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.rounds = 20_000, 1
    import_evidently()
    print(f"cores {os.cpu_count()}; rows {args.rows:,} per frame, {args.rounds} rounds")
    reference = sea(args.rows, 1, shifted=False)
    current = sea(args.rows, 2, shifted=True)
    small = (reference.head(5000), current.head(5000))
    oceanml_check(*small), evidently_check(*small)  # warm-up: imports, first calls
    times: dict[str, list[float]] = {"oceanml": [], "evidently": []}
    found: dict[str, set[str]] = {}
    for _ in range(args.rounds):
        for name, fn in (("oceanml", oceanml_check), ("evidently", evidently_check)):
            seconds, drifted = timed(fn, reference, current)
            times[name].append(seconds)
            found[name] = drifted
    ours, theirs = (statistics.median(times[k]) for k in ("oceanml", "evidently"))
    print(f"oceanml drifted:   {sorted(found['oceanml'])}")
    print(f"evidently drifted: {sorted(found['evidently'])}")
    print(f"figure drift_oceanml_s {ours:.3f} s")
    print(f"figure drift_evidently_s {theirs:.3f} s")
    print(f"figure drift_same_features {int(found['oceanml'] == found['evidently'])} bool")
    print(f"figure drift_planted_found {int(found['oceanml'] == SHIFTED)} bool")
    print(f"ratio drift_evidently_vs_oceanml {theirs / ours:.2f} goal >= 10")
    print(f"ratio drift_oceanml_s {ours:.3f} goal < 3")
    emb = embedding_check()
    print(f"figure drift_embedding_{emb['n']}_vs_{emb['n']}_s {emb['seconds']:.3f} s")
    print(f"figure drift_embedding_sample_per_side {emb['sample_per_side']} images")
    print(f"figure drift_embedding_pvalue {emb['pvalue']:.4f} p")


if __name__ == "__main__":
    main()
