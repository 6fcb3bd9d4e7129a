"""Dataset build + version time, and what a 1% larger version re-uploads to the DVC remote.

N simulated observations are ingested (not timed), then the dataset stage runs as the flow
runs it: select from the DB, export the manifest, ``dvc repro build@plastic-detector``,
``dvc push``, record. Then 1% more observations arrive on a new day and it runs again. The
peer is what a layout without reusable files re-uploads: the whole new version. The shard
step alone on the grown manifest, once from the shard cache as the first version left it (a
copy taken right after that build) and once from nothing, shows what the cache saves on the
rebuild that follows a day of new data.

    .venv/bin/python bench/dataset.py            # 20 000 observations
    .venv/bin/python bench/dataset.py --quick    # 1 000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILE = "cpu-small"  # 64 px shards, the size the recorded figures were taken at
sys.path.insert(0, str(REPO))
MODEL = "plastic-detector"
END = datetime(2026, 11, 20, tzinfo=UTC)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def land(settings, sessions, n: int, days: int, end: datetime, seed: int) -> None:
    from core.store import filesystem
    from oceanml.simulator import simulate, write_landing
    from tasks.ingest import ingest

    devices = 20
    per_day = -(-n // (devices * days))
    stream = (o for i, o in enumerate(simulate(days=days, devices=devices, per_day=per_day,
                                               end=end, seed=seed, annotated_fraction=1.0))
              if i < n)
    write_landing(filesystem(settings.landing_url), stream, faults=False)
    ingest(settings, sessions, now=end)


def timed_build(settings, sessions, now: datetime):
    from tasks.dataset import build_dataset

    start = time.perf_counter()
    version = build_dataset(settings, sessions, MODEL, now=now, profile=PROFILE)
    return version, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 1_000 if args.quick else args.observations
    with tempfile.TemporaryDirectory(prefix="oceanml-bench-dataset-") as tmp:
        root = Path(tmp)
        project = root / "project"
        project.mkdir()
        for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
            shutil.copy(REPO / name, project / name)
        os.environ.update(OCEANML_HOME=str(root / "home"), OCEANML_PROJECT_DIR=str(project))
        from core.database import session_factory
        from core.settings import get_settings

        get_settings.cache_clear()
        settings = get_settings()
        sessions = session_factory(settings.db_url)
        remote = Path(settings.dvc_remote_url)

        start = time.perf_counter()
        land(settings, sessions, n, days=20, end=END, seed=11)
        print(f"figure ingest_setup_untimed_s {time.perf_counter() - start:.1f} s")

        first, build_s = timed_build(settings, sessions, END)
        rows = sum(first.split_counts.values())
        dataset_bytes = tree_bytes(project / "data" / "datasets" / MODEL)
        remote_before = tree_bytes(remote)
        cache_after_first = root / "cache-after-first"  # what the next build will start from
        shutil.copytree(settings.home.resolve() / "shard-cache" / MODEL, cache_after_first)
        print(f"figure observations_built {rows} rows")
        print(f"figure build_and_version_s {build_s:.1f} s")
        print(f"figure build_throughput {rows / build_s:.0f} obs/s")
        print(f"figure dataset_bytes {dataset_bytes} bytes")

        land(settings, sessions, max(1, n // 100), days=1, end=END + timedelta(days=1), seed=12)
        second, rebuild_s = timed_build(settings, sessions, END + timedelta(days=1))
        grown = sum(second.split_counts.values())
        reuploaded = tree_bytes(remote) - remote_before
        new_bytes = tree_bytes(project / "data" / "datasets" / MODEL)
        assert second.version != first.version
        print(f"figure added_observations {grown - rows} rows")
        print(f"figure rebuild_and_version_s {rebuild_s:.1f} s")
        print(f"figure reuploaded_bytes {reuploaded} bytes")
        print(f"figure grown_version_bytes {new_bytes} bytes")

        # the shard step alone on the grown manifest: from the cache the first version left
        # (as the rebuild above started) and from nothing
        from tasks.shards import DatasetParams, build

        params = DatasetParams.load(project, MODEL, PROFILE)
        manifest = project / "data" / "manifests" / f"{MODEL}.csv"
        cache = root / "cache"
        shutil.copytree(cache_after_first, cache)  # a copy: the build prunes what it left out
        times = {}
        for name, cache_dir in (("warm", cache), ("cold", None)):
            start = time.perf_counter()
            build(manifest, root / name, params, settings, cache_dir=cache_dir)
            times[name] = time.perf_counter() - start
        print(f"figure shard_step_from_cache_s {times['warm']:.2f} s")
        print(f"figure shard_step_from_scratch_s {times['cold']:.2f} s")

    share = (grown - rows) / grown  # "about that much": twice the new share at most
    print(f"ratio reupload_vs_whole_version {reuploaded / new_bytes:.4f} goal <= {2 * share:.4f}")
    print(f"ratio shard_step_cached_vs_scratch {times['warm'] / times['cold']:.3f} goal < 0.5")


if __name__ == "__main__":
    main()
