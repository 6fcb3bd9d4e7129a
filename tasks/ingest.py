"""Ingest: landing files -> validated, deduplicated observations in the lake and the DB.

Incremental by a ledger of landing keys (``ingested_files``): a key already handled with the
same fingerprint is not read again, and the landing prefix is never deleted from. Each chunk
is read and validated in a thread pool, its blobs written to the content-addressed lake, then
its rows committed in one transaction, so memory stays flat and a crash loses at most a chunk
of work, never stored data.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from prefect import get_run_logger, task
from sqlalchemy import JSON, insert, select
from sqlalchemy.orm import Session, sessionmaker

from oceanml.db import IngestedFile, Observation, Reject, session_factory
from oceanml.lineage import flow_run_id
from oceanml.progress import StageProgress
from oceanml.settings import Settings, get_settings
from oceanml.store import Location, content_key, filesystem, put_if_absent, sha256_hex
from tasks.validate import (
    Limits,
    Rejection,
    check_key,
    check_observation,
    decode_sidecar,
    inspect_image,
    observation_row,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SIDECAR_SUFFIX = ".json"
TABLE_SUFFIXES = (".csv", ".parquet")
TABLE_COLUMNS = ("device_id", "device_type", "observed_at", "lat", "lon")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Candidate:
    """One landing unit: an image and its sidecar sharing a stem (either may be missing), or
    a table of sensor-only readings (CSV or Parquet, one observation per row)."""

    key: str
    image_key: str | None
    sidecar_key: str | None
    fingerprint: str
    sizes: tuple[tuple[str, int], ...] = ()
    table_key: str | None = None

    def size(self, key: str) -> int:
        return dict(self.sizes).get(key, 0)


@dataclass
class Prepared:
    """One observation after reading and validation: an accepted row or a rejection."""

    candidate: Candidate
    source_key: str
    content_hash: str | None = None
    row: dict[str, Any] | None = None
    image: bytes | None = None
    image_suffix: str = ".jpg"
    rejection: Rejection | None = None


@dataclass
class IngestResult:
    seen: int = 0
    already_known: int = 0
    ingested: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)

    def merge(self, other: IngestResult) -> None:
        self.seen += other.seen
        self.ingested += other.ingested
        self.rejected += other.rejected
        self.reasons.update(other.reasons)


def _fingerprint(info: dict[str, Any]) -> str:
    marker = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("created")
    return f"{info.get('size')}:{marker}"


def pair_files(listing: dict[str, dict[str, Any]]) -> list[Candidate]:
    """Group landing keys by stem into image/sidecar pairs and tables, in a stable order."""
    stems: dict[str, dict[str, str]] = {}
    tables: list[Candidate] = []
    for key in sorted(listing):
        path = PurePosixPath(key)
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            tables.append(Candidate(key, None, None, _fingerprint(listing[key]),
                                    ((key, int(listing[key].get("size") or 0)),), table_key=key))
            continue
        kind = "image" if suffix in IMAGE_SUFFIXES else "sidecar" if suffix == SIDECAR_SUFFIX else "other"
        stems.setdefault(str(path.with_suffix("")), {})[kind] = key
    candidates = []
    for parts in stems.values():
        image, sidecar = parts.get("image"), parts.get("sidecar")
        keys = [k for k in (image, sidecar, parts.get("other")) if k]
        candidates.append(Candidate(
            image or sidecar or parts["other"], image, sidecar,
            "|".join(_fingerprint(listing[k]) for k in keys),
            tuple((k, int(listing[k].get("size") or 0)) for k in keys),
        ))
    return candidates + tables


def _check_size(candidate: Candidate, key: str, limit: int, what: str) -> None:
    if candidate.size(key) > limit:
        raise Rejection(f"{what}_too_large", f"{key}: {candidate.size(key)} bytes > limit {limit}")


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()


def prepare_pair(candidate: Candidate, landing: Location, settings: Settings,
                 limits: Limits) -> Prepared:
    """Read and validate an image with its sidecar; sizes are checked before reading."""
    prepared = Prepared(candidate, candidate.key)
    try:
        check_key(candidate.key)
        if candidate.image_key is None:
            kind = "missing_image" if candidate.sidecar_key else "unsupported_file"
            raise Rejection(kind, f"no image beside {candidate.key}")
        if candidate.sidecar_key is None:
            raise Rejection("missing_sidecar", f"no JSON sidecar beside {candidate.image_key}")
        _check_size(candidate, candidate.image_key, settings.max_image_bytes, "image")
        _check_size(candidate, candidate.sidecar_key, settings.max_sidecar_bytes, "sidecar")
        image = landing.fs.cat_file(landing.path(candidate.image_key))
        raw_sidecar = landing.fs.cat_file(landing.path(candidate.sidecar_key))
        doc = decode_sidecar(raw_sidecar)
        sidecar = check_observation(doc, limits)
        info = inspect_image(
            image, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        prepared.content_hash = sha256_hex(image, b"\0", _canonical(doc))
        prepared.image = image
        prepared.image_suffix = PurePosixPath(candidate.image_key).suffix.lower()
        prepared.row = {
            **observation_row(sidecar),
            "image_width": info.width,
            "image_height": info.height,
            "image_stats": info.stats,
        }
    except Rejection as rejection:
        prepared.rejection = rejection
    return prepared


def _number(value: Any) -> Any:
    """CSV cells are text: numbers become floats ('nan'/'inf' too, so ranges refuse them)."""
    if not isinstance(value, str):
        return value
    if value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def read_table(data: bytes, suffix: str) -> list[dict[str, Any]]:
    """Rows of a CSV (UTF-8, header row) or Parquet file as dicts."""
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = data.decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def row_document(row: dict[str, Any]) -> dict[str, Any]:
    """A table row in the sidecar's shape: the known columns, every other column a reading."""
    doc = {k: row.get(k) for k in TABLE_COLUMNS if row.get(k) not in (None, "")}
    for k in ("lat", "lon"):
        if k in doc:
            doc[k] = _number(doc[k])
    if isinstance(doc.get("observed_at"), datetime) and doc["observed_at"].tzinfo is None:
        doc["observed_at"] = doc["observed_at"].replace(tzinfo=UTC)
    doc["readings"] = {k: _number(v) for k, v in row.items()
                       if k not in TABLE_COLUMNS and v not in (None, "")}
    return doc


def prepare_table(candidate: Candidate, landing: Location, settings: Settings,
                  limits: Limits) -> list[Prepared]:
    """One prepared observation per row; a file that cannot be read at all is one rejection."""
    key = candidate.table_key
    try:
        check_key(key)
        _check_size(candidate, key, settings.max_table_bytes, "table")
        rows = read_table(landing.fs.cat_file(landing.path(key)), PurePosixPath(key).suffix.lower())
    except Rejection as rejection:
        return [Prepared(candidate, key, rejection=rejection)]
    except UnicodeDecodeError as exc:
        return [Prepared(candidate, key, rejection=Rejection("table_not_utf8", str(exc)))]
    except Exception as exc:  # pyarrow and csv raise many types for a broken file
        return [Prepared(candidate, key,
                         rejection=Rejection("table_unreadable", f"{type(exc).__name__}: {exc}"))]
    prepared = []
    for index, row in enumerate(rows):
        item = Prepared(candidate, f"{key}#row={index + 1}")
        try:
            doc = row_document(row)
            obs = check_observation(doc, limits)
            item.content_hash = sha256_hex(b"row\0", _canonical(doc))
            item.row = observation_row(obs)
        except Rejection as rejection:
            item.rejection = rejection
        prepared.append(item)
    return prepared


def prepare(candidate: Candidate, landing: Location, settings: Settings,
            limits: Limits) -> list[Prepared]:
    """Read and validate one candidate; never raises for bad input."""
    if candidate.table_key is not None:
        return prepare_table(candidate, landing, settings, limits)
    return [prepare_pair(candidate, landing, settings, limits)]


def _known(sessions: sessionmaker, keys: list[str]) -> dict[str, str]:
    """Ledger fingerprints of ``keys`` (queried in slices: never the whole ledger)."""
    found: dict[str, str] = {}
    with sessions() as session:
        for start in range(0, len(keys), 500):
            found.update(session.execute(
                select(IngestedFile.source_key, IngestedFile.fingerprint)
                .where(IngestedFile.source_key.in_(keys[start : start + 500]))).all())
    return found


def iter_new(landing: Location, sessions: sessionmaker) -> Iterator[tuple[list[Candidate], int]]:
    """Per landing directory: the candidates not yet in the ledger with the same fingerprint,
    and how many were. Memory holds one directory's listing, however large the landing grows;
    an image and its sidecar share a directory, so pairing needs no more."""
    landing.fs.invalidate_cache()  # object-store listings are cached per process
    for _dirpath, _dirs, files in landing.fs.walk(landing.root, detail=True):
        listing = {landing.relative(info["name"]): info for info in files.values()
                   if info.get("type", "file") == "file"}
        candidates = pair_files(listing)
        known = _known(sessions, [c.key for c in candidates])
        new = [c for c in candidates if known.get(c.key) != c.fingerprint]
        yield new, len(candidates) - len(new)


def load_device_registry(settings: Settings) -> frozenset[str] | None:
    """Known device ids (one per line, or a CSV with a ``device_id`` column), if configured."""
    if not settings.device_registry_url:
        return None
    location = filesystem(settings.device_registry_url, settings)
    text = location.fs.cat_file(location.root).decode("utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and "device_id" in lines[0].split(","):
        return frozenset(row["device_id"] for row in csv.DictReader(io.StringIO(text)))
    return frozenset(lines)


def _classify(prepared: list[Prepared], existing: dict[str, str]) -> tuple[
        dict[str, Prepared], list[Prepared], set[str]]:
    """Accepted (by content hash), rejected, and candidate keys merely re-listed."""
    accepted: dict[str, Prepared] = {}
    rejected: list[Prepared] = []
    unchanged: set[str] = set()
    for p in prepared:
        if p.rejection is None and (p.content_hash in existing or p.content_hash in accepted):
            first = existing.get(p.content_hash) or accepted[p.content_hash].source_key
            if first == p.source_key:  # the same file re-listed (e.g. touched): nothing new
                unchanged.add(p.candidate.key)
                continue
            p.rejection = Rejection("duplicate", f"same content as {first}")
        if p.rejection is not None:
            rejected.append(p)
        else:
            accepted[p.content_hash] = p
    return accepted, rejected, unchanged


def insert_observations(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert rows and return their ids by content hash: COPY on PostgreSQL, else one
    multi-row INSERT ... RETURNING (SQLAlchemy's insertmanyvalues)."""
    if not rows:
        return {}
    if session.get_bind().dialect.name == "postgresql":
        _copy_observations(session, rows)
        found = session.execute(select(Observation.content_hash, Observation.id).where(
            Observation.content_hash.in_([r["content_hash"] for r in rows])))
        return dict(found.all())
    returned = session.execute(
        insert(Observation).returning(Observation.id, Observation.content_hash), rows)
    return {content_hash: obs_id for obs_id, content_hash in returned}


def _copy_observations(session: Session, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY: Python-side defaults are filled here, JSON columns sent as text."""
    table = Observation.__table__
    columns = [c for c in table.columns if c.name != "id"]
    now = datetime.now(UTC)
    defaults = {"created_at": now, "updated_at": now, "extra_readings": {}, "image_stats": {},
                "labels": {}}
    json_columns = {c.name for c in columns if isinstance(c.type, JSON)}
    names = ", ".join(c.name for c in columns)
    cursor = session.connection().connection.driver_connection.cursor()
    with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
        for row in rows:
            values = []
            for c in columns:
                value = row.get(c.name, defaults.get(c.name))
                values.append(json.dumps(value) if c.name in json_columns and value is not None
                              else value)
            copy.write_row(values)


def store_chunk(
    session: Session, lake: Location, prepared: Iterable[Prepared], flow_run_id: str | None
) -> IngestResult:
    """Write one validated chunk: blobs first (content-addressed, harmless if orphaned), then
    observations, rejects and one ledger row per landing file in a single transaction."""
    result = IngestResult()
    prepared = [p for group in prepared for p in group]
    hashes = [p.content_hash for p in prepared if p.content_hash]
    existing = dict(session.execute(
        select(Observation.content_hash, Observation.source_key)
        .where(Observation.content_hash.in_(hashes))).all()) if hashes else {}
    accepted, rejected, unchanged = _classify(prepared, existing)
    result.seen = len(prepared)

    images = {h: p for h, p in accepted.items() if p.image is not None}
    keys = {h: content_key(h, p.image_suffix) for h, p in images.items()}
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda h: put_if_absent(lake, keys[h], images[h].image), images))
    rows = [
        {**p.row, "content_hash": h, "source_key": p.source_key, "image_key": keys.get(h),
         "ingest_flow_run_id": flow_run_id}
        for h, p in accepted.items()
    ]
    ids = insert_observations(session, rows)
    if rejected:
        session.execute(insert(Reject), [
            {"source_key": p.source_key, "reason": p.rejection.reason,
             "detail": p.rejection.detail[:2000], "content_hash": p.content_hash,
             "flow_run_id": flow_run_id} for p in rejected])
    for p in rejected:
        result.reasons[p.rejection.reason] += 1
    result.rejected = len(rejected)
    result.ingested = len(rows)

    ledger: dict[str, dict[str, Any]] = {}
    for p in prepared:  # one row per landing file; "ingested" if any of its rows was
        entry = ledger.setdefault(p.candidate.key, {
            "source_key": p.candidate.key, "fingerprint": p.candidate.fingerprint,
            "outcome": "rejected", "observation_id": None})
        if p.candidate.key in unchanged or (p.rejection is None and p.content_hash in accepted):
            entry["outcome"] = "ingested"
            if p.candidate.table_key is None and p.content_hash in ids:
                entry["observation_id"] = ids[p.content_hash]
    _upsert_ledger(session, list(ledger.values()))
    session.commit()
    return result


def _upsert_ledger(session: Session, rows: list[dict[str, Any]]) -> None:
    """Ledger rows replace older ones for the same key (a changed file is re-read)."""
    if not rows:
        return
    keys = [r["source_key"] for r in rows]
    for old in session.scalars(select(IngestedFile).where(IngestedFile.source_key.in_(keys))):
        session.delete(old)
    session.flush()
    session.execute(insert(IngestedFile), rows)


def ingest(
    settings: Settings,
    sessions: sessionmaker,
    *,
    flow_run_id: str | None = None,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> IngestResult:
    """Ingest everything new under the landing URL; returns counts and reject reasons."""
    landing = filesystem(settings.landing_url, settings)
    lake = filesystem(settings.lake_url, settings)
    limits = Limits(now=now or datetime.now(UTC), max_skew_s=settings.max_clock_skew_s,
                    oldest=settings.oldest_observation, devices=load_device_registry(settings))
    total = IngestResult()
    if not landing.fs.exists(landing.root):
        return total
    listed = done = 0
    chunk: list[Candidate] = []

    def flush(pool: ThreadPoolExecutor) -> None:
        nonlocal chunk, done
        prepared = pool.map(lambda c: prepare(c, landing, settings, limits), chunk)
        with sessions() as session:
            total.merge(store_chunk(session, lake, prepared, flow_run_id))
        done += len(chunk)
        chunk = []
        if progress:
            progress(done, listed)  # the total grows as the walk finds more files

    with ThreadPoolExecutor(max_workers=8) as pool:
        for new, skipped in iter_new(landing, sessions):
            total.already_known += skipped
            listed += len(new)
            for candidate in new:
                chunk.append(candidate)
                if len(chunk) >= settings.ingest_chunk_size:
                    flush(pool)
        if chunk:
            flush(pool)
    return total


@task(name="ingest", retries=2, retry_delay_seconds=[5, 30], timeout_seconds=3600)
def ingest_task() -> dict[str, Any]:
    """Ingest what is new under the landing URL; the summary goes to the flow."""
    settings = get_settings()
    with StageProgress("ingest", unit="file") as progress:
        result = ingest(settings, session_factory(settings.db_url), flow_run_id=flow_run_id(),
                        progress=progress)
    get_run_logger().info(
        "ingest: %d new, %d rejected %s, %d already known",
        result.ingested, result.rejected, dict(result.reasons), result.already_known,
    )
    return {"ingested": result.ingested, "rejected": result.rejected,
            "already_known": result.already_known, "reasons": dict(result.reasons)}
