"""What the endpoint served during a release, per version and role: the evidence that
``oceanml models release status`` shows and the release check judges.

Read from the online rows of ``predictions`` since the release started (every replica writes
there): per version and role, the requests answered, those that failed, the error rate and
the latency percentiles of a request; for a shadow, the pairs (the same request and image
answered by both) and how often they agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import Prediction
from core.releases import ROLES, Release


@dataclass(frozen=True)
class VersionFigures:
    version: str
    role: str  # champion | canary | shadow
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class ReleaseFigures:
    release_id: int
    versions: tuple[VersionFigures, ...]
    pairs: int  # shadow: images answered by both in the same request
    agreement: float | None  # shadow: share of pairs with the same label (classification)

    def of(self, role: str) -> VersionFigures | None:
        return next((v for v in self.versions if v.role == role), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def served_rows(session: Session, release: Release) -> list[Any]:
    """(role, version, request id, content hash, label, latency ms, error, probabilities) of
    every online answer of the release's model since it started, by the champion or the
    candidate."""
    return list(session.execute(
        select(Prediction.role, Prediction.model_version, Prediction.request_id,
               Prediction.content_hash, Prediction.label, Prediction.latency_ms,
               Prediction.error, Prediction.probabilities)
        .where(Prediction.model_name == release.model_name, Prediction.source == "online",
               Prediction.scored_at >= release.started_at,
               Prediction.model_version.in_([release.champion_version,
                                             release.candidate_version]))))


def figures(release: Release, rows: list[Any]) -> ReleaseFigures:
    """Per version and role, from ``rows`` (:func:`served_rows`)."""
    requests: dict[tuple[str, str], dict[str, tuple[float | None, bool]]] = {}
    labels: dict[tuple[str, str, str], str | None] = {}
    for role, version, request_id, content_hash, label, latency_ms, error, _ in rows:
        if role is None:  # answered before releases were recorded
            continue
        seen = requests.setdefault((version, role), {})
        _, failed = seen.get(request_id, (None, False))
        seen[request_id] = (latency_ms, failed or error is not None)
        labels[(role, request_id, content_hash)] = None if error else label
    versions = []
    for (version, role), seen in sorted(requests.items(), key=lambda kv: _order(kv[0][1])):
        latencies = np.array([ms for ms, failed in seen.values()
                              if ms is not None and not failed])
        errors = sum(failed for _, failed in seen.values())
        versions.append(VersionFigures(
            version, role, len(seen), errors, errors / len(seen),
            float(np.percentile(latencies, 50)) if latencies.size else None,
            float(np.percentile(latencies, 99)) if latencies.size else None))
    pairs = [(labels[("champion", r, h)], label) for (role, r, h), label in labels.items()
             if role == "shadow" and ("champion", r, h) in labels]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    agreement = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
    return ReleaseFigures(release.id, tuple(versions), len(pairs), agreement)


def _order(role: str) -> int:
    return ROLES.index(role) if role in ROLES else len(ROLES)


def release_figures(session: Session, release: Release) -> ReleaseFigures:
    return figures(release, served_rows(session, release))
