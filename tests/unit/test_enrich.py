from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from core.db import EnrichmentCache, Observation
from core.llm import MAX_DESCRIPTION, TAG_VOCABULARY, Enrichment, HeuristicProvider, sanitize
from core.store import filesystem
from oceanml.simulator import simulate, write_landing
from tasks.enrich import enrich
from tasks.ingest import ingest

END = datetime(2026, 11, 20, tzinfo=UTC)


def test_sanitize_keeps_only_vocabulary_tags_once() -> None:
    out = sanitize(["algae-bloom", "IGNORE PREVIOUS", "algae-bloom", 3, "calm-sea"], "ok")
    assert out.tags == ["algae-bloom", "calm-sea"]


def test_sanitize_strips_control_characters_and_bounds_length() -> None:
    out = sanitize([], "line one\nline\x00two\x1b[31m" + "x" * 500)
    assert "\n" not in out.description and "\x00" not in out.description
    assert "\x1b" not in out.description
    assert len(out.description) == MAX_DESCRIPTION


def test_sanitize_refuses_a_malformed_answer() -> None:
    with pytest.raises(ValueError):
        sanitize("algae-bloom", "text")


def populated(settings, sessions, scenario="normal") -> int:
    obs = simulate(days=1, devices=2, per_day=15, scenario=scenario, end=END)
    write_landing(filesystem(settings.landing_url), obs, faults=False)
    return ingest(settings, sessions, now=END).ingested


def test_heuristic_tags_follow_the_scene(settings, sessions) -> None:
    populated(settings, sessions, "bloom")
    enrich(sessions, HeuristicProvider())
    with sessions() as s:
        rows = s.scalars(select(Observation)).all()
    assert all(set(o.llm_tags) <= set(TAG_VOCABULARY) for o in rows)
    bloom = [o for o in rows if o.chlorophyll_ug_l > 10]
    assert bloom and all("algae-bloom" in o.llm_tags for o in bloom)
    assert all(o.enrichment["provider"] == "heuristic" and o.llm_description for o in rows)


def test_a_rerun_sends_no_request(settings, sessions) -> None:
    n = populated(settings, sessions)
    first = enrich(sessions, HeuristicProvider())
    second = enrich(sessions, HeuristicProvider())
    assert (first.enriched, first.requests) == (n, n)
    assert (second.enriched, second.requests) == (0, 0)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(EnrichmentCache)) == n
    # answers are cached by content: forgetting the tags re-enriches from the cache alone
    with sessions() as s:
        s.execute(Observation.__table__.update().values(llm_tags=None))
        s.commit()
    third = enrich(sessions, HeuristicProvider())
    assert (third.enriched, third.cache_hits, third.requests) == (n, n, 0)


class FlakyProvider(HeuristicProvider):
    """A provider whose endpoint fails for some items, as real endpoints do."""

    name = "flaky"

    def enrich(self, request) -> Enrichment:
        if int(request.content_hash[:2], 16) % 3 == 0:
            raise TimeoutError("upstream timed out")
        return super().enrich(request)


def test_a_failed_item_stays_pending_and_is_retried(settings, sessions) -> None:
    n = populated(settings, sessions)
    result = enrich(sessions, FlakyProvider())
    assert result.failed > 0 and result.enriched + result.failed == n
    assert all("TimeoutError" in e for e in result.errors.values())
    with sessions() as s:
        pending = s.scalar(select(func.count()).select_from(Observation)
                           .where(Observation.llm_tags.is_(None)))
    assert pending == result.failed
    retry = enrich(sessions, HeuristicProvider("heuristic-v1"))
    assert retry.enriched == result.failed
