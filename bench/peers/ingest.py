"""The ingest a user would write by hand: OceanML's checks, done plainly, with the same
processes. ``bench/ingest.py`` measures OceanML's ingest against it.

Per image + sidecar pair, in a pool of spawned worker processes (as many as OceanML's ingest
uses), batches of 32: read both files; the sidecar as UTF-8 JSON, its schema (device id
pattern, device type, an aware ``observed_at`` neither in the future past the clock skew nor
before 2000, lat/lon, the six known sensors as finite numbers in range, labels an object);
the image under the byte and pixel limits, decoded (JPEG at reduced scale, every byte still
read, so truncation fails) with the same colour statistics the row carries; sha256 of image
and canonical sidecar; the image written once under its content key (temporary file, then
rename: never half a blob under its name). The parent inserts the rows: one ``executemany``
of ``INSERT OR IGNORE`` (SQLite) or a ``COPY`` (PostgreSQL) into the same ``observations``
table OceanML's migrations made, and counts the rejects. No ledger of handled files, no
reject rows, no dedupe lookup before the insert, no progress: OceanML does those as well,
which counts against it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
SKEW = timedelta(seconds=600)
OLDEST = datetime(2000, 1, 1, tzinfo=UTC)
DEVICE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SENSORS = {"water_temp_c": (-3.0, 40.0), "salinity_psu": (0.0, 45.0), "ph": (4.0, 10.0),
           "turbidity_ntu": (0.0, 4000.0), "chlorophyll_ug_l": (0.0, 500.0),
           "dissolved_oxygen_mg_l": (0.0, 25.0)}
BATCH = 32
COLUMNS = ("content_hash", "source_key", "device_id", "device_type", "observed_at", "lat", "lon",
           *SENSORS, "extra_readings", "image_key", "image_width", "image_height", "image_stats",
           "labels", "created_at", "updated_at")


class Refused(ValueError):
    """Why a pair was refused."""


def number(value: object, lo: float, hi: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(f"schema: {name} is not a number")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise Refused(f"out_of_range: {name} {value}")
    return float(value)


def check_sidecar(raw: bytes, now: datetime) -> dict:
    """The row's columns from a sidecar, or :class:`Refused`."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(f"sidecar: {exc}") from None
    if not isinstance(doc, dict):
        raise Refused("schema: not an object")
    device = doc.get("device_id")
    if not isinstance(device, str) or not DEVICE.match(device):
        raise Refused("schema: device_id")
    kind = doc.get("device_type", "unknown")
    if not isinstance(kind, str) or len(kind) > 32:
        raise Refused("schema: device_type")
    try:
        observed = datetime.fromisoformat(doc["observed_at"])
    except (KeyError, TypeError, ValueError):
        raise Refused("schema: observed_at") from None
    if observed.tzinfo is None:
        raise Refused("schema: observed_at has no time zone")
    if observed > now + SKEW or observed < OLDEST:
        raise Refused("timestamp: observed_at out of range")
    readings = doc.get("readings") or {}
    labels = doc.get("labels") or {}
    if not isinstance(readings, dict) or not isinstance(labels, dict):
        raise Refused("schema: readings or labels")
    row = {"device_id": device, "device_type": kind, "observed_at": observed.astimezone(UTC),
           "lat": number(doc.get("lat"), -90.0, 90.0, "lat"),
           "lon": number(doc.get("lon"), -180.0, 180.0, "lon"), "labels": labels}
    for name, (lo, hi) in SENSORS.items():
        value = readings.get(name)
        row[name] = None if value is None else number(value, lo, hi, name)
    row["extra_readings"] = {k: v for k, v in readings.items()
                             if k not in SENSORS and v is not None}
    row["_doc"] = doc
    return row


def check_image(data: bytes) -> tuple[int, int, dict]:
    """Width, height and colour statistics of a decodable image, or :class:`Refused`."""
    if len(data) > MAX_IMAGE_BYTES:
        raise Refused("image_too_large")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise Refused("decompression_bomb")
        if img.format == "JPEG":
            img.draft("RGB", (32, 32))
        img.load()
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a broken image
        raise Refused(f"image: {exc}") from None
    small = img.convert("RGB").resize((32, 32), Image.Resampling.BOX)
    r, g, b = (np.asarray(band, dtype=np.float32) / 255.0 for band in small.split())
    grey = (r + g + b) / 3.0
    red, green, blue = float(r.mean()), float(g.mean()), float(b.mean())
    stats = {"brightness": round(float(grey.mean()), 4), "contrast": round(float(grey.std()), 4),
             "red": round(red, 4), "green": round(green, 4), "blue": round(blue, 4),
             "green_ratio": round(green / (red + green + blue + 1e-6), 4),
             "saturation": round(float((np.maximum(np.maximum(r, g), b)
                                        - np.minimum(np.minimum(r, g), b)).mean()), 4)}
    return width, height, stats


def read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def write_blob(lake: str, digest: str, data: bytes) -> str:
    """The image under its content key, written once."""
    key = f"images/{digest[:2]}/{digest}.jpg"
    path = os.path.join(lake, key)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return key


def content_hash(image: bytes, doc: dict) -> str:
    """sha256 of the image and the canonical sidecar: the same pair, the same hash."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
    digest = hashlib.sha256(image)  # fed in parts: no concatenated copy of the image
    digest.update(b"\0")
    digest.update(canonical)
    return digest.hexdigest()


def prepare(image_path: str, sidecar_path: str, source_key: str, lake: str,
            now: datetime) -> dict:
    """One pair's row, or ``{"refused": why}``."""
    image, raw = read_file(image_path), read_file(sidecar_path)
    try:
        row = check_sidecar(raw, now)
        width, height, stats = check_image(image)
    except Refused as exc:
        return {"refused": str(exc)}
    digest = content_hash(image, row.pop("_doc"))
    return {**row, "content_hash": digest, "source_key": source_key,
            "image_key": write_blob(lake, digest, image), "image_width": width,
            "image_height": height, "image_stats": stats}


def prepare_batch(pairs: list[tuple[str, str, str]], lake: str, now: datetime) -> list[dict]:
    return [prepare(i, s, k, lake, now) for i, s, k in pairs]


def pairs_under(landing: Path) -> list[tuple[str, str, str]]:
    """Every image with its sidecar beside it: (image, sidecar, key of the pair)."""
    found = []
    for folder, _, files in os.walk(landing):
        for name in files:
            if name.endswith(".jpg"):
                image = os.path.join(folder, name)
                sidecar = image[:-4] + ".json"
                if os.path.exists(sidecar):
                    found.append((image, sidecar, os.path.relpath(image, landing)))
    return sorted(found)


def plain(value: object) -> object:
    return json.dumps(value) if isinstance(value, dict | list) else value


def insert_rows(rows: list[dict], db: str) -> None:
    """One INSERT OR IGNORE executemany (a SQLite file) or one COPY (a PostgreSQL URL)."""
    now = datetime.now(UTC)
    values = [tuple(plain(r.get(c, now)) for c in COLUMNS) for r in rows]
    if db.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db.replace("postgresql+psycopg://", "postgresql://")) as conn, \
                conn.cursor() as cur, \
                cur.copy(f"COPY observations ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in values:
                copy.write_row(row)
        return
    import sqlite3

    conn = sqlite3.connect(db)
    conn.executemany(f"INSERT OR IGNORE INTO observations ({', '.join(COLUMNS)}) "
                     f"VALUES ({', '.join('?' * len(COLUMNS))})", values)
    conn.commit()
    conn.close()


def ingest(landing: Path, lake: Path, db: str, workers: int, now: datetime) -> tuple[int, int]:
    """Everything under ``landing`` checked, written and inserted; (stored, refused)."""
    pairs = pairs_under(landing)
    batches = [pairs[i:i + BATCH] for i in range(0, len(pairs), BATCH)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        done = [r for batch in pool.map(prepare_batch, batches, [str(lake)] * len(batches),
                                        [now] * len(batches)) for r in batch]
    rows = [r for r in done if "refused" not in r]
    insert_rows(rows, db)
    return len(rows), len(done) - len(rows)


def step_costs(landing: Path, lake: Path, db: str, now: datetime) -> dict[str, float]:
    """CPU milliseconds per pair of each step, one step at a time in this process."""
    cpu = dict.fromkeys(("read", "decode_validate", "hash", "lake_write", "insert"), 0.0)
    rows = []
    pairs = pairs_under(landing)

    def timed(step, fn, *args):
        t0 = time.process_time()
        out = fn(*args)
        cpu[step] += time.process_time() - t0
        return out

    for image_path, sidecar_path, key in pairs:
        image = timed("read", read_file, image_path)
        raw = timed("read", read_file, sidecar_path)
        row = timed("decode_validate", check_sidecar, raw, now)
        width, height, stats = timed("decode_validate", check_image, image)
        digest = timed("hash", content_hash, image, row.pop("_doc"))
        rows.append({**row, "content_hash": digest, "source_key": key,
                     "image_key": timed("lake_write", write_blob, lake, digest, image),
                     "image_width": width, "image_height": height, "image_stats": stats})
    timed("insert", insert_rows, rows, db)
    return {step: 1000 * seconds / len(pairs) for step, seconds in cpu.items()}
