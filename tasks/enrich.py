"""Enrich: tags from a fixed vocabulary and a one-line description for each new observation.

Answers are cached by (content hash, prompt version, provider, model), so a re-run sends no
request; a failed item stays un-enriched and is tried again on the next run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from oceanml.db import SENSOR_COLUMNS, EnrichmentCache, Observation, session_factory
from oceanml.llm import PROMPT_VERSION, EnrichmentProvider, EnrichmentRequest, make_provider
from oceanml.progress import StageProgress
from oceanml.settings import get_settings
from oceanml.store import sha256_hex


@dataclass
class EnrichResult:
    enriched: int = 0
    cache_hits: int = 0
    requests: int = 0
    failed: int = 0
    errors: dict[str, str] = field(default_factory=dict)


def cache_key(content_hash: str, provider: EnrichmentProvider) -> str:
    return sha256_hex(f"{content_hash}|{PROMPT_VERSION}|{provider.name}|{provider.model}".encode())


def request_for(obs: Observation) -> EnrichmentRequest:
    return EnrichmentRequest(
        content_hash=obs.content_hash,
        device_type=obs.device_type,
        readings={name: getattr(obs, name) for name in SENSOR_COLUMNS},
        image_stats=obs.image_stats or {},
    )


def enrich_batch(
    session: Session, batch: list[Observation], provider: EnrichmentProvider, result: EnrichResult
) -> None:
    """Enrich one batch: cached answers first, the provider for the rest; one commit."""
    keys = {obs.id: cache_key(obs.content_hash, provider) for obs in batch}
    cached = {
        row.key: row
        for row in session.scalars(select(EnrichmentCache).where(EnrichmentCache.key.in_(keys.values())))
    }
    now = datetime.now(UTC)
    provenance = {"provider": provider.name, "model": provider.model, "prompt": PROMPT_VERSION,
                  "at": now.isoformat()}
    updates: list[dict] = []
    for obs in batch:
        key = keys[obs.id]
        if key in cached:
            tags, description = cached[key].tags, cached[key].description
            result.cache_hits += 1
        else:
            result.requests += 1
            try:
                answer = provider.enrich(request_for(obs))
            except Exception as exc:  # one item's failure never fails the batch
                result.failed += 1
                result.errors[obs.content_hash] = f"{type(exc).__name__}: {exc}"[:500]
                continue
            tags, description = answer.tags, answer.description
            session.add(EnrichmentCache(key=key, tags=tags, description=description))
        updates.append({"id": obs.id, "llm_tags": tags, "llm_description": description,
                        "enrichment": provenance})
        result.enriched += 1
    if updates:
        session.execute(update(Observation), updates)  # bulk UPDATE by primary key
    session.commit()


def enrich(
    sessions: sessionmaker,
    provider: EnrichmentProvider,
    *,
    batch_size: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> EnrichResult:
    """Enrich every observation that has no tags yet."""
    result = EnrichResult()
    with sessions() as session:
        pending = session.scalars(
            select(Observation.id).where(Observation.llm_tags.is_(None)).order_by(Observation.id)
        ).all()
    for start in range(0, len(pending), batch_size):
        ids = pending[start : start + batch_size]
        with sessions() as session:
            batch = session.scalars(select(Observation).where(Observation.id.in_(ids))).all()
            enrich_batch(session, list(batch), provider, result)
        if progress:
            progress(min(start + batch_size, len(pending)), len(pending))
    return result


@task(name="enrich", retries=2, retry_delay_seconds=[10, 60], timeout_seconds=6 * 3600)
def enrich_task() -> dict[str, Any]:
    """Enrich every un-enriched observation with the configured provider."""
    settings = get_settings()
    provider = make_provider(settings)
    with StageProgress("enrich", unit="obs") as progress:
        result = enrich(session_factory(settings.db_url), provider, progress=progress)
    get_run_logger().info(
        "enrich (%s/%s): %d enriched, %d from cache, %d requests, %d failed",
        provider.name, provider.model, result.enriched, result.cache_hits, result.requests,
        result.failed,
    )
    return {"provider": provider.name, "model": provider.model, **{
        k: v for k, v in result.__dict__.items() if k != "errors"}, "errors": len(result.errors)}
