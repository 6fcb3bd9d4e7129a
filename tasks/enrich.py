"""Enrich: tags from a fixed vocabulary and a one-line description for each new observation.

Answers are cached by (content hash, prompt version, provider, model), so a re-run sends no
request; a failed item stays un-enriched and is tried again on the next run.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from prefect import task
from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from core.batches import slices
from core.database import session_factory
from core.db import SENSOR_COLUMNS, EnrichmentCache, Observation
from core.llm import (
    PROMPT_VERSION,
    Enrichment,
    EnrichmentProvider,
    EnrichmentRequest,
    make_provider,
)
from core.logs import stage_logger
from core.progress import StageProgress
from core.settings import Settings, get_settings
from core.store import Location, filesystem, sha256_hex
from tasks.results import EnrichCounts, EnrichSummary, counts_of


@dataclass(frozen=True)
class Budget:
    """Per-run caps; past either one the stage stops cleanly and leaves the rest pending."""

    max_requests: int | None = None
    max_tokens: int | None = None


@dataclass
class EnrichResult(EnrichCounts):
    errors: dict[str, str] = field(default_factory=dict)  # content hash -> why it failed


def _wants_images(provider: EnrichmentProvider) -> bool:
    return bool(getattr(provider, "vision", False))


def cache_key(content_hash: str, provider: EnrichmentProvider) -> str:
    prompt = PROMPT_VERSION + ("+image" if _wants_images(provider) else "")
    return sha256_hex(f"{content_hash}|{prompt}|{provider.name}|{provider.model}".encode())


def request_for(obs: Observation) -> EnrichmentRequest:
    return EnrichmentRequest(
        content_hash=obs.content_hash,
        device_type=obs.device_type,
        readings={name: getattr(obs, name) for name in SENSOR_COLUMNS},
        image_stats=obs.image_stats or {},
        metadata=obs.extra_readings or {},
        image_key=obs.image_key,
    )


@dataclass(frozen=True)
class Item:
    """What a provider call needs and what its result is written back to."""

    obs_id: int
    key: str
    request: EnrichmentRequest


def _ask(provider: EnrichmentProvider, item: Item, lake: Location | None
         ) -> tuple[Item, Enrichment | Exception]:
    """One provider call; a vision model gets the image, read here in the worker thread so
    only the images of calls in flight are in memory."""
    try:
        request = item.request
        if _wants_images(provider) and lake is not None and request.image_key:
            request = replace(request, image=lake.fs.cat_file(lake.path(request.image_key)))
        return item, provider.enrich(request)
    except Exception as exc:  # one item's failure never fails the run
        return item, exc


class _Writer:
    """Buffers answers and writes them in chunks: one bulk UPDATE and one commit per flush."""

    def __init__(self, sessions: sessionmaker, provider: EnrichmentProvider,
                 result: EnrichResult, flush_every: int = 200) -> None:
        self.sessions = sessions
        self.result = result
        self.flush_every = flush_every
        self.provenance = {"provider": provider.name, "model": provider.model,
                           "prompt": PROMPT_VERSION, "at": datetime.now(UTC).isoformat()}
        self.updates: list[dict[str, Any]] = []
        self.cache_rows: list[EnrichmentCache] = []

    def cached(self, obs_id: int, row: EnrichmentCache) -> None:
        self.result.cache_hits += 1
        self._add(obs_id, row.tags, row.description)

    def answered(self, item: Item, answer: Enrichment | Exception) -> None:
        if isinstance(answer, Exception):
            self.result.failed += 1
            self.result.errors[item.request.content_hash] = f"{type(answer).__name__}: {answer}"[:500]
            return
        self.cache_rows.append(EnrichmentCache(key=item.key, tags=answer.tags,
                                               description=answer.description))
        self._add(item.obs_id, answer.tags, answer.description)

    def _add(self, obs_id: int, tags: list[str], description: str) -> None:
        self.updates.append({"id": obs_id, "llm_tags": tags, "llm_description": description,
                             "enrichment": self.provenance})
        self.result.enriched += 1
        if len(self.updates) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.updates:
            return
        with self.sessions() as session:
            session.add_all(self.cache_rows)
            session.execute(update(Observation), self.updates)  # bulk UPDATE by primary key
            session.commit()
        self.updates, self.cache_rows = [], []


def _capped(provider: EnrichmentProvider) -> int:
    usage = getattr(provider, "usage", None)
    return usage.retry_after_capped if usage else 0


def _tokens(provider: EnrichmentProvider) -> tuple[int, int]:
    usage = getattr(provider, "usage", None)
    return (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)


def _over_budget(result: EnrichResult, provider: EnrichmentProvider, budget: Budget,
                 tokens_before: tuple[int, int]) -> str:
    if budget.max_requests is not None and result.requests >= budget.max_requests:
        return f"request budget of {budget.max_requests} spent"
    spent = sum(_tokens(provider)) - sum(tokens_before)
    if budget.max_tokens is not None and spent >= budget.max_tokens:
        return f"token budget of {budget.max_tokens} spent"
    return ""


def _page(sessions: sessionmaker, ids: list[int], provider: EnrichmentProvider
          ) -> tuple[list[Item], dict[int, EnrichmentCache]]:
    """One page of pending observations: the calls to make and the answers already cached."""
    with sessions() as session:
        batch = session.scalars(select(Observation).where(Observation.id.in_(ids))
                                .order_by(Observation.id)).all()
        items = [Item(o.id, cache_key(o.content_hash, provider), request_for(o)) for o in batch]
        rows = session.scalars(select(EnrichmentCache).where(
            EnrichmentCache.key.in_([i.key for i in items]))).all()
    by_key = {row.key: row for row in rows}
    cached = {i.obs_id: by_key[i.key] for i in items if i.key in by_key}
    return [i for i in items if i.obs_id not in cached], cached


def enrich(
    sessions: sessionmaker,
    provider: EnrichmentProvider,
    *,
    batch_size: int = 500,
    concurrency: int = 1,
    budget: Budget | None = None,
    progress: Callable[[int, int], None] | None = None,
    lake: Location | None = None,
) -> EnrichResult:
    """Enrich every observation that has no tags yet, within the budget.

    Calls stream through one pool with at most ``2 * concurrency`` submitted at a time, so a
    slow or rate-limited item never holds up the others; answers are written in chunks as they
    arrive. A provider that can (``limit_in_flight``) holds ``concurrency`` requests at once,
    and a call waiting out a ``Retry-After`` gives its slot to a submitted item meanwhile.
    Budgets are checked before each call, so a token cap is passed by at most the calls
    submitted.
    """
    budget = budget or Budget()
    result = EnrichResult()
    tokens_before = _tokens(provider)
    capped_before = _capped(provider)
    with sessions() as session:
        pending = session.scalars(
            select(Observation.id).where(Observation.llm_tags.is_(None)).order_by(Observation.id)
        ).all()
    writer = _Writer(sessions, provider, result)
    in_flight: set[Future] = set()
    limit = getattr(provider, "limit_in_flight", None)
    if limit is not None:
        limit(max(1, concurrency))

    def collect(block_until_one: bool) -> None:
        nonlocal in_flight
        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED if block_until_one
                               else ALL_COMPLETED)
        for future in done:
            writer.answered(*future.result())
        if progress and done:
            progress(result.enriched + result.failed, len(pending))

    with ThreadPoolExecutor(max_workers=2 * max(1, concurrency)) as pool:
        for page in slices(pending, batch_size):
            items, cached = _page(sessions, page, provider)
            for obs_id, row in cached.items():
                writer.cached(obs_id, row)
            for item in items:
                result.stopped = _over_budget(result, provider, budget, tokens_before)
                if result.stopped:
                    break
                while len(in_flight) >= 2 * max(1, concurrency):
                    collect(block_until_one=True)
                in_flight.add(pool.submit(_ask, provider, item, lake))
                result.requests += 1
            if progress and cached:
                progress(result.enriched + result.failed, len(pending))
            if result.stopped:
                break
        collect(block_until_one=False)
    writer.flush()
    tokens_after = _tokens(provider)
    result.retry_after_capped = _capped(provider) - capped_before
    result.prompt_tokens = tokens_after[0] - tokens_before[0]
    result.completion_tokens = tokens_after[1] - tokens_before[1]
    result.left = len(pending) - result.enriched
    if result.left > result.failed and not result.stopped:  # the last call hit the cap
        result.stopped = _over_budget(result, provider, budget, tokens_before)
    return result


def estimated_cost(result: EnrichResult, settings: Settings) -> float:
    return (result.prompt_tokens * settings.llm_cost_per_1k_prompt
            + result.completion_tokens * settings.llm_cost_per_1k_completion) / 1000


@task(name="enrich", retries=2, retry_delay_seconds=[10, 60], timeout_seconds=6 * 3600)
def enrich_task() -> EnrichSummary:
    """Enrich every un-enriched observation with the configured provider, within the budget."""
    settings = get_settings()
    provider = make_provider(settings)
    budget = Budget(settings.llm_max_requests, settings.llm_max_tokens)
    with StageProgress("enrich", unit="obs") as progress:
        result = enrich(session_factory(settings.db_url), provider, progress=progress,
                        concurrency=settings.llm_concurrency, budget=budget,
                        lake=filesystem(settings.lake_url, settings))
    logger = stage_logger("enrich")
    logger.info(
        "enrich (%s/%s): %d enriched, %d from cache, %d requests, %d failed, %d left%s",
        provider.name, provider.model, result.enriched, result.cache_hits, result.requests,
        result.failed, result.left, f" ({result.stopped})" if result.stopped else "",
    )
    for content_hash, error in list(result.errors.items())[:10]:
        logger.warning("enrich failed for %s: %s", content_hash[:12], error)
    return summarize(result, provider, settings)


def summarize(result: EnrichResult, provider: EnrichmentProvider, settings: Settings
              ) -> EnrichSummary:
    """What the run log and the summaries show of a run: the counts, the provider and the
    estimated cost; the errors by count (each is in the run log)."""
    return EnrichSummary(**counts_of(result), provider=provider.name, model=provider.model,
                         errors=len(result.errors),
                         cost=round(estimated_cost(result, settings), 4))
