"""Ingest: landing files -> validated, deduplicated observations in the lake and the DB.

Incremental by a ledger of landing keys (``ingested_files``): a key already handled with the
same fingerprint is not read again, and the landing prefix is never deleted from. Each chunk
is read, validated and its valid images written to the content-addressed lake
(``tasks.landing``; in worker processes for large runs, ``tasks.preparer``) while the one
before it is stored: rows, rejects and ledger in one transaction. Blobs always precede their
rows; memory holds the rows of at most ``AHEAD`` + 1 chunks (images never leave the process
that read them), and a crash loses at most that much work, never stored data.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import task
from sqlalchemy import any_, bindparam, insert, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, sessionmaker

from core.batches import slices
from core.database import copy_rows, executemany, session_factory, upsert
from core.db import IngestedFile, Observation, Reject
from core.lineage import flow_run_id
from core.logs import stage_logger
from core.progress import StageProgress
from core.settings import Settings, get_settings
from core.store import Location, filesystem, listings
from tasks.landing import Candidate, Prepared, ingest_limits, pair_files
from tasks.preparer import Preparer, Submitted, worker_count
from tasks.validate import Rejection

Progress = Callable[[int, int], None]


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


AHEAD = 2  # chunks submitted to the workers beyond the one being stored


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a run's rows pass through this process.
    Every row the workers send back is a few new dicts that live until their chunk is
    stored, so the collector ran a hundred times per 5 000 observations and traced them all
    each time: a quarter of this process's CPU (0.13 of 0.55 s), on the cores the
    workers need, and more in a flow run, whose heap is Prefect's too. The rows hold no
    cycles; reference counting frees them as before. What does make cycles (a chunk's
    session, its cursors: about 90 objects per chunk) is swept after each chunk by
    :func:`ingest`, so they do not pile up with the run. Left off if it was off."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


SLICE = 500  # values per IN (...): SQLite binds at most 999 (older builds) or 32 766 per statement


def lookup(session: Session, key: Any, value: Any, keys: list[Any]) -> dict[Any, Any]:
    """``{key: value}`` for the rows whose ``key`` column is in ``keys``, queried in slices,
    so a large chunk never exceeds the parameter limit and no query reads a whole table.
    PostgreSQL gets the slice as one array (``= ANY``): psycopg parsed a statement of 500
    placeholders anew for each query, 3 ms of the storing process's CPU each time."""
    postgresql = session.get_bind().dialect.name == "postgresql"
    by_array = select(key, value).where(key == any_(bindparam("keys", type_=ARRAY(key.type))))
    found: dict[Any, Any] = {}
    for part in slices(keys, SLICE):
        if postgresql:
            rows = session.execute(by_array, {"keys": part})
        else:
            rows = session.execute(select(key, value).where(key.in_(part)))
        found.update(rows.all())
    return found


def _known(sessions: sessionmaker, keys: list[str]) -> dict[str, str]:
    """Ledger fingerprints of ``keys``."""
    with sessions() as session:
        return lookup(session, IngestedFile.source_key, IngestedFile.fingerprint, keys)


def iter_new(landing: Location, sessions: sessionmaker) -> Iterator[tuple[list[Candidate], int]]:
    """Groups of landing directories (at least ``SLICE`` candidates, or what is left): the
    candidates not yet in the ledger with the same fingerprint, and how many were. Memory holds a few directories'
    listings, however large the landing grows; an image and its sidecar share a directory, so
    pairing needs no more. One ledger query per group, not per directory: a landing of small
    folders (a device per day) cost one query and session per 40 files."""
    landing.fs.invalidate_cache()  # object-store listings are cached per process
    group: list[Candidate] = []
    for listing in listings(landing):
        group += pair_files(listing)
        if len(group) >= SLICE:
            yield _unknown(sessions, group)
            group = []
    if group:
        yield _unknown(sessions, group)


def _unknown(sessions: sessionmaker, candidates: list[Candidate]) -> tuple[list[Candidate], int]:
    """The candidates the ledger does not hold with the same fingerprint, and how many it did."""
    known = _known(sessions, [c.key for c in candidates])
    new = [c for c in candidates if known.get(c.key) != c.fingerprint]
    return new, len(candidates) - len(new)


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
    """Insert rows and return their ids by content hash. PostgreSQL gets COPY; other
    databases one driver executemany (:func:`core.database.executemany`), without the ORM's
    or SQLAlchemy's per-row work. The ids come back in one query per slice either way."""
    if not rows:
        return {}
    if session.get_bind().dialect.name == "postgresql":
        copy_rows(session, Observation.__table__, rows)
    else:
        executemany(session, insert(Observation.__table__), rows)
    return lookup(session, Observation.content_hash, Observation.id,
                  [r["content_hash"] for r in rows])


def store_chunk(session: Session, prepared: list[Prepared], flow_run_id: str | None
                ) -> IngestResult:
    """Write one validated chunk (its blobs are in the lake already, see
    ``tasks.landing.prepare_pair``): observations, rejects and one ledger row per landing
    file, in a single transaction."""
    result = IngestResult()
    hashes = [p.content_hash for p in prepared if p.content_hash]
    existing = lookup(session, Observation.content_hash, Observation.source_key, hashes)
    accepted, rejected, unchanged = _classify(prepared, existing)
    result.seen = len(prepared)

    rows = [
        {**p.row, "content_hash": h, "source_key": p.source_key, "image_key": p.image_key,
         "ingest_flow_run_id": flow_run_id}
        for h, p in accepted.items()
    ]
    ids = insert_observations(session, rows)
    if rejected:
        executemany(session, insert(Reject.__table__), [
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
    _upsert_ledger(session, [{**row, "seen_at": datetime.now(UTC)} for row in ledger.values()])
    session.commit()
    return result


def _upsert_ledger(session: Session, rows: list[dict[str, Any]]) -> None:
    """Ledger rows replace older ones for the same key (a changed file is re-read), in one
    upsert: another ingest that stored the same key since this one listed it (the nightly's
    and the monitor's overlap) is overwritten, not a conflict that fails the chunk."""
    upsert(session, IngestedFile.__table__, rows,
           update=["fingerprint", "outcome", "observation_id", "seen_at"])


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
    limits = ingest_limits(settings, now, load_device_registry(settings))
    total = IngestResult()
    if not landing.fs.exists(landing.root):
        return total
    listed = done = 0
    chunk: list[Candidate] = []
    pending: deque[tuple[list[Submitted], int]] = deque()  # submitted, not yet stored, in order

    def store(submitted: list[Submitted], size: int) -> None:
        nonlocal done
        with sessions() as session:
            total.merge(store_chunk(session, Preparer.collect(submitted), flow_run_id))
        gc.collect(0)  # the cycles this chunk's storing left, while the collector is paused
        done += size
        if progress:
            progress(done, listed)  # the total grows as the walk finds more files

    def flush(preparer: Preparer) -> None:
        """Submit this chunk; store the oldest while the workers read the ``AHEAD`` after it
        (with fewer queued, the workers idle whenever this process commits)."""
        nonlocal chunk
        pending.append((preparer.submit(chunk), len(chunk)))
        chunk = []
        while len(pending) > AHEAD:
            store(*pending.popleft())

    with collector_paused(), Preparer(landing, settings, limits, lake,
                                      workers=worker_count(settings.ingest_workers),
                                      pool_from=settings.ingest_chunk_size) as preparer:
        for new, skipped in iter_new(landing, sessions):
            total.already_known += skipped
            listed += len(new)
            for candidate in new:
                chunk.append(candidate)
                if len(chunk) >= settings.ingest_chunk_size:
                    flush(preparer)
        if chunk:
            flush(preparer)
        while pending:
            store(*pending.popleft())
    return total


@task(name="ingest", retries=2, retry_delay_seconds=[5, 30], timeout_seconds=3600)
def ingest_task() -> IngestResult:
    """Ingest what is new under the landing URL; the summary goes to the flow."""
    settings = get_settings()
    with StageProgress("ingest", unit="file") as progress:
        result = ingest(settings, session_factory(settings.db_url), flow_run_id=flow_run_id(),
                        progress=progress)
    stage_logger("ingest").info(
        "ingest: %d new, %d rejected %s, %d already known",
        result.ingested, result.rejected, dict(result.reasons), result.already_known,
    )
    return result
