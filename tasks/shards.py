"""The ``build@<model>`` DVC stage: a manifest -> Parquet shards, reference stats and a card.

Runs as ``python -m tasks.shards build --model NAME`` from the DVC project root (``dvc repro``
calls it), so it imports nothing heavy. Splits hash the observation's content hash, so an
observation never changes split as the dataset grows; shards are cut per split and observation
day, so growth adds new shards and leaves old ones byte-identical (DVC re-uploads only those),
and a rebuild copies unchanged shards from a local cache instead of re-encoding their images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.db import SENSOR_COLUMNS
from core.params import load_file, load_params, model_section, validated
from core.params_schema import DatasetSection
from core.settings import Settings, get_settings
from core.store import filesystem
from models.preprocess import shard_jpeg
from tasks.drift_stats import numeric_reference
from tasks.selection import Labelling, Selection

IMAGE_FEATURES = ("brightness", "contrast", "green_ratio", "saturation")
DRIFT_FEATURES = SENSOR_COLUMNS + tuple(f"image_{f}" for f in IMAGE_FEATURES)
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = (
    "content_hash", "image_key", "label", "observed_at", "device_id", "device_type",
    *DRIFT_FEATURES, "llm_tags", "label_source",
)


class DatasetParams(DatasetSection):
    """The dataset section of ``params.yaml`` for one model, its selection as applied."""

    selection: Selection = Selection()

    @classmethod
    def load(cls, project_dir: Path, model: str, profile: str | None = None) -> DatasetParams:
        """``datasets.<model>`` of the project's ``params.yaml`` under ``profile``, the whole
        file checked first."""
        load_file(project_dir, profile)
        section = model_section(load_params(project_dir, profile), "datasets", model)
        return cls.from_dict(section, f"datasets.{model}")

    @classmethod
    def from_dict(cls, section: dict[str, Any], where: str = "datasets") -> DatasetParams:
        """A section as written (the resolved file the DVC stage reads, too), refused by key
        and place."""
        return validated(cls, section, where)

    def labelling(self) -> Labelling:
        return Labelling(self.label_key, self.label_source, self.weak_labels)


def split_of(content_hash: str, ratios: tuple[float, float, float]) -> str:
    """Deterministic split from the id alone: stable as the dataset grows."""
    bucket = int(hashlib.sha256(content_hash.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < ratios[0]:
        return "train"
    return "val" if bucket < ratios[0] + ratios[1] else "test"


EMBEDDING_SAMPLE = 256  # reference images whose embeddings drift compares with the window's


def tag_counts(tags: pd.Series) -> dict[str, int]:
    """Rows carrying each tag, from the manifest's comma-joined tags; split and counted in
    Arrow (a Python loop costs a second per million rows)."""
    import pyarrow.compute as pc

    joined = pa.array(tags.fillna("").astype(str), type=pa.string())
    counts = pc.value_counts(pc.list_flatten(pc.split_pattern(joined, ",")))
    return {v["values"].as_py(): v["counts"].as_py() for v in counts if v["values"].as_py()}


def reference_stats(frame: pd.DataFrame, sample: int, bins: int = 10) -> dict[str, Any]:
    """What drift checks compare against: a value sample and quantile bins per numeric
    feature, category and tag counts, and the content hashes of a sample of images (their
    embeddings, on whichever champion is checked, are the image reference)."""
    numeric = {name: numeric_reference(values, sample, bins) for name in DRIFT_FEATURES
               if len(values := frame[name].dropna().to_numpy(dtype=float))}
    tags = tag_counts(frame["llm_tags"])
    hashes = frame["content_hash"].sample(min(len(frame), EMBEDDING_SAMPLE), random_state=0)
    return {
        "n": int(len(frame)),
        "numeric": numeric,
        "categorical": {
            "device_type": frame["device_type"].value_counts().to_dict(),
            "llm_tags": tags,
        },
        "embedding_sample": sorted(hashes),
    }


SHARD_FORMAT = "v3"  # bump when the bytes a shard holds change for the same rows
ROW_GROUP_ROWS = 64  # the unit a training worker reads: many per shard, so workers share them


def shard_plan(frame: pd.DataFrame, shard_rows: int) -> list[tuple[str, pd.DataFrame]]:
    """(file name, rows) per shard: by split, then by observation day, then in runs of
    ``shard_rows``. A new day only adds shards, and data arriving late for a day rewrites only
    that day's, so a grown dataset shares almost every file with its predecessor."""
    plan = []
    day = frame["observed_at"].str.slice(0, 10).str.replace("-", "", regex=False)
    for split in SPLITS:
        in_split = frame[frame["split"] == split]
        for date, rows in in_split.groupby(day[in_split.index], sort=True):
            for n, start in enumerate(range(0, len(rows), shard_rows)):
                plan.append((f"{split}-{date}-{n:03d}.parquet", rows.iloc[start : start + shard_rows]))
    return plan


def shard_key(rows: pd.DataFrame, image_size: int) -> str:
    """What a shard's bytes are a function of: its rows' identity and labels, and the size."""
    cols = ["content_hash", "label", "label_source", "device_id", "device_type", "llm_tags"]
    doc = json.dumps([SHARD_FORMAT, image_size, rows[cols].fillna("").values.tolist()])
    return hashlib.sha256(doc.encode()).hexdigest()


def _encode_shard(rows: pd.DataFrame, lake: Any, image_size: int, pool: ThreadPoolExecutor,
                  dest: Path) -> None:
    blobs = lake.fs.cat([lake.path(k) for k in rows["image_key"]])
    images = list(pool.map(lambda k: shard_jpeg(blobs[lake.path(k)], image_size),
                           rows["image_key"]))
    table = pa.table({
        "content_hash": rows["content_hash"].tolist(),
        "image": pa.array(images, type=pa.binary()),
        "label": rows["label"].tolist(),
        "label_source": rows["label_source"].fillna("annotated").tolist(),
        "device_id": rows["device_id"].tolist(),
        "device_type": rows["device_type"].tolist(),
        "llm_tags": rows["llm_tags"].fillna("").tolist(),
    })
    tmp = dest.with_suffix(".tmp")
    pq.write_table(table, tmp, compression="none", row_group_size=ROW_GROUP_ROWS)
    tmp.replace(dest)


def write_shards(frame: pd.DataFrame, out_dir: Path, params: DatasetParams, settings: Settings,
                 cache_dir: Path | None = None) -> dict[str, int]:
    """Write every shard of ``frame`` into ``out_dir``; a shard whose key is in ``cache_dir``
    (the previous build) is copied instead of decoded and re-encoded. Returns counts of
    shards ``encoded`` and ``reused``."""
    lake = filesystem(settings.lake_url, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.parquet"):
        old.unlink()
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    counts = {"encoded": 0, "reused": 0}
    used: set[str] = set()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for name, rows in shard_plan(frame, params.shard_rows):
            cached = cache_dir / f"{shard_key(rows, params.image_size)}.parquet" if cache_dir else None
            if cached is not None and cached.exists():
                shutil.copyfile(cached, out_dir / name)
                counts["reused"] += 1
            else:
                _encode_shard(rows, lake, params.image_size, pool, out_dir / name)
                if cached is not None:
                    shutil.copyfile(out_dir / name, cached)
                counts["encoded"] += 1
            if cached is not None:
                used.add(cached.name)
    if cache_dir is not None:  # keep one build's worth: the cache never outgrows the dataset
        for stale in cache_dir.glob("*.parquet"):
            if stale.name not in used:
                stale.unlink()
    return counts


def card_of(frame: pd.DataFrame, params: DatasetParams) -> dict[str, Any]:
    """Counts per split, class and label source: what the card artifact and the DB show."""
    return {
        "label_key": params.label_key,
        "image_size": params.image_size,
        "split_counts": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "class_counts": {
            s: frame.loc[frame["split"] == s, "label"].value_counts().sort_index().to_dict()
            for s in SPLITS
        },
        "label_sources": frame["label_source"].fillna("annotated").value_counts().to_dict(),
    }


def build(manifest_path: Path, out_dir: Path, params: DatasetParams, settings: Settings,
          cache_dir: Path | None = None) -> dict:
    """Write shards, reference statistics and a card for one manifest; returns the card."""
    frame = pd.read_csv(manifest_path, dtype={"label": str, "llm_tags": str,
                                              "label_source": str})
    if "label_source" not in frame:
        frame["label_source"] = "annotated"  # manifests written before weak labels existed
    frame["split"] = [split_of(h, params.split) for h in frame["content_hash"]]
    counts = write_shards(frame, out_dir, params, settings, cache_dir)
    card = card_of(frame, params)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
    stats = reference_stats(frame[frame["split"] == "train"], params.reference_sample)
    (out_dir / "reference_stats.json").write_text(json.dumps(stats, sort_keys=True))
    # no copy of the manifest here: it changes whole with every new row, and DVC would
    # re-upload all of it; the shards' content_hash column says what the version holds
    (out_dir / "manifest.csv").unlink(missing_ok=True)
    return {**card, "shards": counts}


def resolved_params_path(project_dir: Path, model: str) -> Path:
    """The dataset section a build used, profile applied: written by the dataset stage beside
    the manifest and a dependency of ``build@<model>``, so a change of profile is a rebuild."""
    return project_dir / "data" / "manifests" / f"{model}.params.json"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``build@<model>`` DVC stage."""
    parser = argparse.ArgumentParser(prog="python -m tasks.shards")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="build the shards of one model's dataset")
    cmd.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    settings = get_settings()
    root = Path.cwd()
    params = DatasetParams.from_dict(json.loads(resolved_params_path(root, args.model).read_text()),
                                     f"datasets.{args.model}")
    card = build(
        root / "data" / "manifests" / f"{args.model}.csv",
        root / "data" / "datasets" / args.model,
        params,
        settings,
        cache_dir=settings.home.resolve() / "shard-cache" / args.model,
    )
    print(json.dumps({"splits": card["split_counts"], "shards": card["shards"]}))


if __name__ == "__main__":
    main()
