"""Reading and validating landing files, apart from storing them.

Everything here is pure per candidate (bytes in, a row or a rejection out) and free of
Prefect and the DB session, so it runs unchanged in worker processes: decoding every image
to validate it is CPU-bound, and threads would serialise on the GIL.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from core.settings import Settings
from core.store import (
    Location,
    content_key,
    put_if_absent,
    read_bytes,
    sha256_hex,
)
from tasks.device_tables import read_table, row_document
from tasks.validate import (
    Limits,
    Rejection,
    Sidecar,
    check_key,
    check_observation,
    decode_sidecar,
    inspect_image,
    observation_row,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SIDECAR_SUFFIX = ".json"
TABLE_SUFFIXES = (".csv", ".parquet")


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
    problem: tuple[str, str] | None = None  # (reason, detail): refused before it is read

    def size(self, key: str) -> int:
        return dict(self.sizes).get(key, 0)


@dataclass
class Prepared:
    """One observation after reading and validation: an accepted row or a rejection."""

    candidate: Candidate
    source_key: str
    content_hash: str | None = None
    row: dict[str, Any] | None = None
    image_key: str | None = None  # the image's key in the lake, written once it was valid
    rejection: Rejection | None = None  # Rejection.kept(): no traceback, no cycle


def _fingerprint(info: dict[str, Any]) -> str:
    marker = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("created")
    return f"{info.get('size')}:{marker}"


def pair_files(listing: dict[str, dict[str, Any]]) -> list[Candidate]:
    """Group landing keys by stem into image/sidecar pairs and tables, in a stable order.

    Every key ends in exactly one candidate, so every file becomes an observation, part of
    one, or a reject with its reason: a file that is neither an image, a sidecar nor a table
    is refused on its own (``unsupported_file``), and a stem with several images (``x.jpg``
    and ``x.png``) or several sidecars refuses each of its files (``ambiguous_pair``), since
    which image a sidecar describes is unknown.
    """
    stems: dict[str, dict[str, list[str]]] = {}
    tables: list[Candidate] = []
    for key in sorted(listing):
        stem, suffix = posixpath.splitext(key)  # str ops: PurePosixPath costs 10x per key
        suffix = suffix.lower()
        if suffix in TABLE_SUFFIXES:
            tables.append(_candidate(listing, key, table_key=key))
            continue
        kind = "image" if suffix in IMAGE_SUFFIXES else "sidecar" if suffix == SIDECAR_SUFFIX else "other"
        stems.setdefault(stem, {}).setdefault(kind, []).append(key)
    candidates = []
    for parts in stems.values():
        images, sidecars = parts.get("image", []), parts.get("sidecar", [])
        for key in parts.get("other", []):
            candidates.append(_candidate(listing, key, problem=(
                "unsupported_file", f"{key}: not an image ({', '.join(IMAGE_SUFFIXES)}), a "
                f"{SIDECAR_SUFFIX} sidecar or a table ({', '.join(TABLE_SUFFIXES)})")))
        if len(images) > 1 or len(sidecars) > 1:
            group = ", ".join(images + sidecars)
            candidates += [_candidate(listing, key, problem=(
                "ambiguous_pair", f"{key}: one stem holds {group}; which image a sidecar "
                "describes is unknown: give each pair a stem of its own")) for key in images + sidecars]
        elif images or sidecars:
            image, sidecar = (images or [None])[0], (sidecars or [None])[0]
            candidates.append(_candidate(listing, image or sidecar, image, sidecar))
    return candidates + tables


def _candidate(listing: dict[str, dict[str, Any]], key: str, image: str | None = None,
               sidecar: str | None = None, **extra: Any) -> Candidate:
    keys = [k for k in (image, sidecar) if k] or [key]
    return Candidate(key, image, sidecar, "|".join(_fingerprint(listing[k]) for k in keys),
                     tuple((k, int(listing[k].get("size") or 0)) for k in keys), **extra)


def _check_size(candidate: Candidate, key: str, limit: int, what: str) -> None:
    if candidate.size(key) > limit:
        raise Rejection(f"{what}_too_large", f"{key}: {candidate.size(key)} bytes > limit {limit}")


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()


@dataclass(frozen=True)
class CheckedPair:
    """An image and its sidecar that passed: the observation's content hash and row."""

    content_hash: str
    sidecar: Sidecar
    row: dict[str, Any]
    image_format: str


def check_pair(image: bytes, raw_sidecar: bytes, settings: Settings, limits: Limits
               ) -> CheckedPair:
    """The checks every image and sidecar pass, wherever they come from (a landing listing,
    the device API): sizes, the sidecar's schema and ranges, the image decoded whole; the
    content hash (image, then the canonical sidecar) is the observation's identity."""
    if len(raw_sidecar) > settings.max_sidecar_bytes:
        raise Rejection("sidecar_too_large",
                        f"{len(raw_sidecar)} bytes > limit {settings.max_sidecar_bytes}")
    doc = decode_sidecar(raw_sidecar)
    sidecar = check_observation(doc, limits)
    info = inspect_image(image, max_bytes=settings.max_image_bytes,
                         max_pixels=settings.max_image_pixels)
    row = {**observation_row(sidecar), "image_width": info.width,
           "image_height": info.height, "image_stats": info.stats}
    return CheckedPair(sha256_hex(image, b"\0", _canonical(doc)), sidecar, row, info.format)


def ingest_limits(settings: Settings, now: datetime | None = None,
                  devices: frozenset[str] | None = None) -> Limits:
    """The limits an observation is checked against at ``now``."""
    return Limits(now=now or datetime.now(UTC), max_skew_s=settings.max_clock_skew_s,
                  oldest=settings.oldest_observation, devices=devices)


def prepare_pair(candidate: Candidate, landing: Location, settings: Settings,
                 limits: Limits, lake: Location,
                 fetched: dict[str, bytes | Exception] | None = None) -> Prepared:
    """Read and validate an image with its sidecar (sizes are checked before reading), then
    write a valid image to the content-addressed lake: the process holding the bytes writes
    them, and a blob whose row is never committed is harmless (the same content, same key)."""
    prepared = Prepared(candidate, candidate.key)
    try:
        check_key(candidate.key)
        if candidate.problem is not None:
            raise Rejection(*candidate.problem)
        if candidate.image_key is None:
            kind = "missing_image" if candidate.sidecar_key else "unsupported_file"
            raise Rejection(kind, f"no image beside {candidate.key}")
        if candidate.sidecar_key is None:
            raise Rejection("missing_sidecar", f"no JSON sidecar beside {candidate.image_key}")
        _check_size(candidate, candidate.image_key, settings.max_image_bytes, "image")
        _check_size(candidate, candidate.sidecar_key, settings.max_sidecar_bytes, "sidecar")
        image = read_bytes(landing, candidate.image_key, fetched)
        checked = check_pair(image, read_bytes(landing, candidate.sidecar_key, fetched),
                             settings, limits)
        prepared.content_hash = checked.content_hash
        prepared.image_key = content_key(checked.content_hash,
                                         PurePosixPath(candidate.image_key).suffix.lower())
        prepared.row = checked.row
    except Rejection as rejection:
        prepared.rejection = rejection.kept()
        return prepared
    put_if_absent(lake, prepared.image_key, image)
    return prepared


def prepare_table(candidate: Candidate, landing: Location, settings: Settings,
                  limits: Limits) -> list[Prepared]:
    """One prepared observation per row; a file that cannot be read at all is one rejection."""
    key = candidate.table_key
    try:
        check_key(key)
        _check_size(candidate, key, settings.max_table_bytes, "table")
        rows = read_table(read_bytes(landing, key), PurePosixPath(key).suffix.lower())
    except Rejection as rejection:
        return [Prepared(candidate, key, rejection=rejection.kept())]
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
            item.rejection = rejection.kept()
        prepared.append(item)
    return prepared


def prepare(candidate: Candidate, landing: Location, settings: Settings, limits: Limits,
            lake: Location, fetched: dict[str, bytes | Exception] | None = None
            ) -> list[Prepared]:
    """Read and validate one candidate; never raises for bad input."""
    if candidate.table_key is not None:
        return prepare_table(candidate, landing, settings, limits)
    return [prepare_pair(candidate, landing, settings, limits, lake, fetched)]


def pair_keys(candidates: list[Candidate], settings: Settings) -> list[str]:
    """The images and sidecars of ``candidates`` within their size limits (a file over its
    limit is refused before it is read)."""
    return [key for c in candidates
            if c.table_key is None and c.problem is None and c.image_key and c.sidecar_key
            and c.size(c.image_key) <= settings.max_image_bytes
            and c.size(c.sidecar_key) <= settings.max_sidecar_bytes
            for key in (c.image_key, c.sidecar_key)]
