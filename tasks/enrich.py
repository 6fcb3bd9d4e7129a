"""Enrich: tags from a fixed vocabulary and a one-line description for each new observation.

Answers are cached by (content hash, prompt version, provider, model), so a re-run sends no
request; a failed item stays un-enriched and is tried again on the next run.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from oceanml.db import SENSOR_COLUMNS, EnrichmentCache, Observation, session_factory
from oceanml.llm import (
    PROMPT_VERSION,
    Enrichment,
    EnrichmentProvider,
    EnrichmentRequest,
    make_provider,
)
from oceanml.progress import StageProgress
from oceanml.settings import Settings, get_settings
from oceanml.store import sha256_hex


@dataclass(frozen=True)
class Budget:
    """Per-run caps; past either one the stage stops cleanly and leaves the rest pending."""

    max_requests: int | None = None
    max_tokens: int | None = None


@dataclass
class EnrichResult:
    enriched: int = 0
    cache_hits: int = 0
    requests: int = 0
    failed: int = 0
    left: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped: str = ""
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


def _ask(provider: EnrichmentProvider, obs: Observation) -> Enrichment | Exception:
    try:
        return provider.enrich(request_for(obs))
    except Exception as exc:  # one item's failure never fails the batch
        return exc


def enrich_batch(
    session: Session,
    batch: list[Observation],
    provider: EnrichmentProvider,
    result: EnrichResult,
    *,
    concurrency: int = 1,
    max_new: int | None = None,
) -> None:
    """Enrich one batch: cached answers first, then at most ``max_new`` provider calls,
    ``concurrency`` at a time; one commit."""
    keys = {obs.id: cache_key(obs.content_hash, provider) for obs in batch}
    cached = {
        row.key: row
        for row in session.scalars(select(EnrichmentCache).where(EnrichmentCache.key.in_(keys.values())))
    }
    misses = [obs for obs in batch if keys[obs.id] not in cached][:max_new]
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        answers = dict(zip([o.id for o in misses], pool.map(lambda o: _ask(provider, o), misses),
                           strict=True))
    result.requests += len(misses)
    provenance = {"provider": provider.name, "model": provider.model, "prompt": PROMPT_VERSION,
                  "at": datetime.now(UTC).isoformat()}
    updates: list[dict] = []
    for obs in batch:
        key = keys[obs.id]
        if key in cached:
            tags, description = cached[key].tags, cached[key].description
            result.cache_hits += 1
        elif obs.id in answers:
            answer = answers[obs.id]
            if isinstance(answer, Exception):
                result.failed += 1
                result.errors[obs.content_hash] = f"{type(answer).__name__}: {answer}"[:500]
                continue
            tags, description = answer.tags, answer.description
            session.add(EnrichmentCache(key=key, tags=tags, description=description))
        else:
            continue  # over budget: stays pending for the next run
        updates.append({"id": obs.id, "llm_tags": tags, "llm_description": description,
                        "enrichment": provenance})
        result.enriched += 1
    if updates:
        session.execute(update(Observation), updates)  # bulk UPDATE by primary key
    session.commit()


def _tokens(provider: EnrichmentProvider) -> tuple[int, int]:
    usage = getattr(provider, "usage", None)
    return (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)


def _over_budget(result: EnrichResult, provider: EnrichmentProvider, budget: Budget) -> str:
    if budget.max_requests is not None and result.requests >= budget.max_requests:
        return f"request budget of {budget.max_requests} spent"
    if budget.max_tokens is not None and sum(_tokens(provider)) >= budget.max_tokens:
        return f"token budget of {budget.max_tokens} spent"
    return ""


def enrich(
    sessions: sessionmaker,
    provider: EnrichmentProvider,
    *,
    batch_size: int = 500,
    concurrency: int = 1,
    budget: Budget | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EnrichResult:
    """Enrich every observation that has no tags yet, within the budget.

    With a token budget, batches shrink to ``4 * concurrency`` items, so the cap is passed by
    at most that many requests.
    """
    budget = budget or Budget()
    if budget.max_tokens is not None:
        batch_size = min(batch_size, 4 * max(1, concurrency))
    result = EnrichResult()
    tokens_before = _tokens(provider)
    with sessions() as session:
        pending = session.scalars(
            select(Observation.id).where(Observation.llm_tags.is_(None)).order_by(Observation.id)
        ).all()
    for start in range(0, len(pending), batch_size):
        result.stopped = _over_budget(result, provider, budget)
        if result.stopped:
            break
        ids = pending[start : start + batch_size]
        max_new = None if budget.max_requests is None else budget.max_requests - result.requests
        with sessions() as session:
            batch = session.scalars(select(Observation).where(Observation.id.in_(ids))).all()
            enrich_batch(session, list(batch), provider, result, concurrency=concurrency,
                         max_new=max_new)
        if progress:
            progress(min(start + batch_size, len(pending)), len(pending))
    tokens_after = _tokens(provider)
    result.prompt_tokens = tokens_after[0] - tokens_before[0]
    result.completion_tokens = tokens_after[1] - tokens_before[1]
    result.left = len(pending) - result.enriched
    if result.left > result.failed and not result.stopped:  # the last batch hit the cap
        result.stopped = _over_budget(result, provider, budget)
    return result


def estimated_cost(result: EnrichResult, settings: Settings) -> float:
    return (result.prompt_tokens * settings.llm_cost_per_1k_prompt
            + result.completion_tokens * settings.llm_cost_per_1k_completion) / 1000


@task(name="enrich", retries=2, retry_delay_seconds=[10, 60], timeout_seconds=6 * 3600)
def enrich_task() -> dict[str, Any]:
    """Enrich every un-enriched observation with the configured provider, within the budget."""
    settings = get_settings()
    provider = make_provider(settings)
    budget = Budget(settings.llm_max_requests, settings.llm_max_tokens)
    with StageProgress("enrich", unit="obs") as progress:
        result = enrich(session_factory(settings.db_url), provider, progress=progress,
                        concurrency=settings.llm_concurrency, budget=budget)
    logger = get_run_logger()
    logger.info(
        "enrich (%s/%s): %d enriched, %d from cache, %d requests, %d failed, %d left%s",
        provider.name, provider.model, result.enriched, result.cache_hits, result.requests,
        result.failed, result.left, f" ({result.stopped})" if result.stopped else "",
    )
    for content_hash, error in list(result.errors.items())[:10]:
        logger.warning("enrich failed for %s: %s", content_hash[:12], error)
    summary = {k: v for k, v in asdict(result).items() if k != "errors"}
    return {"provider": provider.name, "model": provider.model, **summary,
            "errors": len(result.errors), "cost": round(estimated_cost(result, settings), 4)}
