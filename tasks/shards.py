"""The ``build@<model>`` DVC stage: a manifest -> Parquet shards, reference stats and a card.

Runs as ``python -m tasks.shards build --model NAME`` from the DVC project root (``dvc repro``
calls it), so it imports nothing heavy. Splits hash the observation's content hash, so an
observation never changes split as the dataset grows; shards follow observation time, so
growth appends new shards and leaves old ones byte-identical (DVC re-uploads only those).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from oceanml.db import SENSOR_COLUMNS
from oceanml.settings import Settings, get_settings
from oceanml.store import filesystem

IMAGE_FEATURES = ("brightness", "contrast", "green_ratio", "saturation")
DRIFT_FEATURES = SENSOR_COLUMNS + tuple(f"image_{f}" for f in IMAGE_FEATURES)
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = (
    "content_hash", "image_key", "label", "observed_at", "device_id", "device_type",
    *DRIFT_FEATURES, "llm_tags",
)


@dataclass(frozen=True)
class DatasetParams:
    """The dataset section of ``params.yaml`` for one model."""

    label_key: str
    image_size: int = 64
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    shard_rows: int = 512
    reference_sample: int = 2000

    @classmethod
    def load(cls, params_file: Path, model: str) -> DatasetParams:
        section = yaml.safe_load(params_file.read_text())["datasets"][model]
        section["split"] = tuple(section.get("split", cls.split))
        return cls(**section)


def split_of(content_hash: str, ratios: tuple[float, float, float]) -> str:
    """Deterministic split from the id alone: stable as the dataset grows."""
    bucket = int(hashlib.sha256(content_hash.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < ratios[0]:
        return "train"
    return "val" if bucket < ratios[0] + ratios[1] else "test"


def reference_stats(frame: pd.DataFrame, sample: int, bins: int = 10) -> dict[str, Any]:
    """What drift checks compare against: a value sample, quantile bins and category counts."""
    numeric: dict[str, Any] = {}
    for name in DRIFT_FEATURES:
        values = frame[name].dropna().to_numpy(dtype=float)
        if len(values) == 0:
            continue
        step = max(1, len(values) // sample)
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
        numeric[name] = {
            "sample": [round(float(v), 6) for v in values[::step][:sample]],
            "edges": [float(e) for e in edges],
            "mean": float(values.mean()),
            "std": float(values.std()),
        }
    tags = frame["llm_tags"].fillna("").str.split(",").explode()
    return {
        "n": int(len(frame)),
        "numeric": numeric,
        "categorical": {
            "device_type": frame["device_type"].value_counts().to_dict(),
            "llm_tags": tags[tags != ""].value_counts().to_dict(),
        },
    }


def _resize_jpeg(data: bytes, size: int) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build(manifest_path: Path, out_dir: Path, params: DatasetParams, settings: Settings) -> dict:
    """Write shards, reference statistics and a card for one manifest; returns the card."""
    frame = pd.read_csv(manifest_path, dtype={"label": str, "llm_tags": str})
    frame["split"] = [split_of(h, params.split) for h in frame["content_hash"]]
    lake = filesystem(settings.lake_url, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.parquet"):
        old.unlink()
    for split in SPLITS:
        part = frame[frame["split"] == split].reset_index(drop=True)
        for shard, start in enumerate(range(0, len(part), params.shard_rows)):
            rows = part.iloc[start : start + params.shard_rows]
            blobs = lake.fs.cat([lake.path(k) for k in rows["image_key"]])
            images = [_resize_jpeg(blobs[lake.path(k)], params.image_size) for k in rows["image_key"]]
            table = pa.table({
                "content_hash": rows["content_hash"].tolist(),
                "image": pa.array(images, type=pa.binary()),
                "label": rows["label"].tolist(),
                "device_type": rows["device_type"].tolist(),
                "llm_tags": rows["llm_tags"].fillna("").tolist(),
            })
            pq.write_table(table, out_dir / f"{split}-{shard:05d}.parquet", compression="none")
    card = {
        "label_key": params.label_key,
        "image_size": params.image_size,
        "split_counts": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "class_counts": {
            s: frame.loc[frame["split"] == s, "label"].value_counts().sort_index().to_dict()
            for s in SPLITS
        },
    }
    (out_dir / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
    stats = reference_stats(frame[frame["split"] == "train"], params.reference_sample)
    (out_dir / "reference_stats.json").write_text(json.dumps(stats, sort_keys=True))
    frame.drop(columns=["split"]).to_csv(out_dir / "manifest.csv", index=False)
    return card


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``build@<model>`` DVC stage."""
    parser = argparse.ArgumentParser(prog="python -m tasks.shards")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="build the shards of one model's dataset")
    cmd.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    settings = get_settings()
    root = Path.cwd()
    params = DatasetParams.load(root / "params.yaml", args.model)
    card = build(
        root / "data" / "manifests" / f"{args.model}.csv",
        root / "data" / "datasets" / args.model,
        params,
        settings,
    )
    print(json.dumps(card["split_counts"]))


if __name__ == "__main__":
    main()
