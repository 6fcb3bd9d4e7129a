"""Ingest: landing files -> validated, deduplicated observations in the lake and the DB.

Incremental by a ledger of landing keys (``ingested_files``): a key already handled with the
same fingerprint is not read again, and the landing prefix is never deleted from. Each chunk
is read and validated in a thread pool, its blobs written to the content-addressed lake, then
its rows committed in one transaction, so memory stays flat and a crash loses at most a chunk
of work, never stored data.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from prefect import get_run_logger, task
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from oceanml.db import IngestedFile, Observation, Reject, session_factory
from oceanml.lineage import flow_run_id
from oceanml.progress import StageProgress
from oceanml.settings import Settings, get_settings
from oceanml.store import Location, content_key, filesystem, put_if_absent, sha256_hex
from tasks.validate import Rejection, inspect_image, observation_row, parse_sidecar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SIDECAR_SUFFIX = ".json"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Candidate:
    """One landing unit: an image and its sidecar sharing a stem (either may be missing)."""

    key: str
    image_key: str | None
    sidecar_key: str | None
    fingerprint: str


@dataclass
class Prepared:
    """A candidate after reading and validation: an accepted row or a rejection."""

    candidate: Candidate
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
    """Group landing keys by stem into image/sidecar pairs, in a stable order."""
    stems: dict[str, dict[str, str]] = {}
    for key in sorted(listing):
        path = PurePosixPath(key)
        suffix = path.suffix.lower()
        kind = "image" if suffix in IMAGE_SUFFIXES else "sidecar" if suffix == SIDECAR_SUFFIX else "other"
        stems.setdefault(str(path.with_suffix("")), {})[kind] = key
    candidates = []
    for parts in stems.values():
        image, sidecar = parts.get("image"), parts.get("sidecar")
        key = image or sidecar or parts["other"]
        prints = [_fingerprint(listing[k]) for k in (image, sidecar, parts.get("other")) if k]
        candidates.append(Candidate(key, image, sidecar, "|".join(prints)))
    return candidates


def prepare(candidate: Candidate, landing: Location, settings: Settings, now: datetime) -> Prepared:
    """Read and validate one candidate; never raises for bad input."""
    prepared = Prepared(candidate)
    try:
        if candidate.image_key is None:
            kind = "missing_image" if candidate.sidecar_key else "unsupported_file"
            raise Rejection(kind, f"no image beside {candidate.key}")
        if candidate.sidecar_key is None:
            raise Rejection("missing_sidecar", f"no JSON sidecar beside {candidate.image_key}")
        image = landing.fs.cat_file(landing.path(candidate.image_key))
        raw_sidecar = landing.fs.cat_file(landing.path(candidate.sidecar_key))
        sidecar = parse_sidecar(raw_sidecar, now=now)
        info = inspect_image(
            image, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        canonical = json.dumps(json.loads(raw_sidecar), sort_keys=True, separators=(",", ":"))
        prepared.content_hash = sha256_hex(image, b"\0", canonical.encode())
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


def list_new(
    landing: Location, known: dict[str, str]
) -> tuple[list[Candidate], int]:
    """Candidates not yet in the ledger with the same fingerprint, and how many were skipped."""
    listing = {
        landing.relative(path): info
        for path, info in landing.fs.find(landing.root, detail=True).items()
        if info.get("type", "file") == "file"
    }
    candidates = pair_files(listing)
    new = [c for c in candidates if known.get(c.key) != c.fingerprint]
    return new, len(candidates) - len(new)


def _chunks(items: list[Candidate], size: int) -> Iterator[list[Candidate]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def store_chunk(
    session: Session, lake: Location, prepared: Iterable[Prepared], flow_run_id: str | None
) -> IngestResult:
    """Write one validated chunk: blobs first (content-addressed, harmless if orphaned), then
    observations, rejects and ledger rows in a single transaction."""
    result = IngestResult()
    prepared = list(prepared)
    hashes = [p.content_hash for p in prepared if p.content_hash]
    existing = dict(
        session.execute(
            select(Observation.content_hash, Observation.source_key).where(
                Observation.content_hash.in_(hashes)
            )
        ).all()
    ) if hashes else {}
    accepted: dict[str, Prepared] = {}
    rejects: list[dict[str, Any]] = []
    ledger: list[dict[str, Any]] = []
    for p in prepared:
        result.seen += 1
        key = p.candidate.key
        if p.rejection is None and (p.content_hash in existing or p.content_hash in accepted):
            first = existing.get(p.content_hash) or accepted[p.content_hash].candidate.key
            if first == key:  # the same file re-listed (e.g. touched): nothing new
                ledger.append({"source_key": key, "fingerprint": p.candidate.fingerprint,
                               "outcome": "ingested"})
                continue
            p.rejection = Rejection("duplicate", f"same content as {first}")
        if p.rejection is not None:
            rejects.append({"source_key": key, "reason": p.rejection.reason,
                            "detail": p.rejection.detail[:2000], "content_hash": p.content_hash,
                            "flow_run_id": flow_run_id})
            ledger.append({"source_key": key, "fingerprint": p.candidate.fingerprint,
                           "outcome": "rejected"})
            result.rejected += 1
            result.reasons[p.rejection.reason] += 1
            continue
        accepted[p.content_hash] = p

    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = {h: content_key(h, p.image_suffix) for h, p in accepted.items()}
        list(pool.map(lambda h: put_if_absent(lake, keys[h], accepted[h].image), accepted))

    rows = [
        {**p.row, "content_hash": h, "source_key": p.candidate.key, "image_key": keys[h],
         "ingest_flow_run_id": flow_run_id}
        for h, p in accepted.items()
    ]
    ids: dict[str, int] = {}
    if rows:
        returned = session.execute(
            insert(Observation).returning(Observation.id, Observation.content_hash), rows
        )
        ids = {content_hash: obs_id for obs_id, content_hash in returned}
    for h, p in accepted.items():
        ledger.append({"source_key": p.candidate.key, "fingerprint": p.candidate.fingerprint,
                       "outcome": "ingested", "observation_id": ids.get(h)})
    if rejects:
        session.execute(insert(Reject), rejects)
    _upsert_ledger(session, ledger)
    session.commit()
    result.ingested = len(rows)
    return result


def _upsert_ledger(session: Session, rows: list[dict[str, Any]]) -> None:
    """Ledger rows replace older ones for the same key (a changed file is re-read)."""
    if not rows:
        return
    keys = [r["source_key"] for r in rows]
    for old in session.scalars(select(IngestedFile).where(IngestedFile.source_key.in_(keys))):
        session.delete(old)
    session.flush()
    session.execute(insert(IngestedFile), [{"observation_id": None, **r} for r in rows])


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
    now = now or datetime.now(UTC)
    if not landing.fs.exists(landing.root):
        return IngestResult()
    with sessions() as session:
        known = dict(session.execute(select(IngestedFile.source_key, IngestedFile.fingerprint)).all())
    candidates, skipped = list_new(landing, known)
    total = IngestResult(already_known=skipped)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for chunk in _chunks(candidates, settings.ingest_chunk_size):
            prepared = pool.map(lambda c: prepare(c, landing, settings, now), chunk)
            with sessions() as session:
                total.merge(store_chunk(session, lake, prepared, flow_run_id))
            if progress:
                progress(total.seen, len(candidates))
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
