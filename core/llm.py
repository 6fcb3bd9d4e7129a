"""Enrichment providers behind one interface, and the guard every answer passes through.

An answer is untrusted input whatever its source: :func:`sanitize` keeps only tags of the fixed
vocabulary and a bounded one-line description without control characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.settings import Settings

TAG_VOCABULARY = (
    "clear-water",
    "turbid-water",
    "green-water",
    "algae-bloom",
    "low-light",
    "bright-glare",
    "rough-sea",
    "calm-sea",
    "warm-water",
    "cold-water",
    "low-oxygen",
    "freshwater-influence",
    "high-contrast-objects",
)
PROMPT_VERSION = "tags-v1"
MAX_DESCRIPTION = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


@dataclass(frozen=True)
class EnrichmentRequest:
    """What a provider may look at: readings and image statistics, passed as data."""

    content_hash: str
    device_type: str
    readings: dict[str, float | None]
    image_stats: dict[str, float]
    metadata: dict[str, Any] = field(default_factory=dict)  # free text from the device: data
    image_key: str | None = None
    image: bytes | None = field(default=None, repr=False)  # loaded only for vision models


@dataclass(frozen=True)
class Enrichment:
    tags: list[str]
    description: str


class EnrichmentProvider(Protocol):
    name: str
    model: str

    def enrich(self, request: EnrichmentRequest) -> Enrichment: ...


def sanitize(tags: Any, description: Any) -> Enrichment:
    """Keep vocabulary tags (order kept, no repeats) and a clean, bounded description."""
    if not isinstance(tags, list) or not isinstance(description, str):
        raise ValueError("answer must hold a list of tags and a string description")
    kept = list(dict.fromkeys(t for t in tags if isinstance(t, str) and t in TAG_VOCABULARY))
    text = _CONTROL.sub(" ", description).strip()
    text = re.sub(r"\s+", " ", text)[:MAX_DESCRIPTION]
    return Enrichment(tags=kept, description=text)


class HeuristicProvider:
    """Deterministic, offline tagger from readings and colour statistics.

    Clearly named so nobody mistakes it for a language model: it is the embedded default and the
    baseline an LLM must beat.
    """

    name = "heuristic"

    def __init__(self, model: str = "heuristic-v1") -> None:
        self.model = model

    def enrich(self, request: EnrichmentRequest) -> Enrichment:
        r, s = request.readings, request.image_stats
        tags: list[str] = []

        def reading(name: str) -> float:
            value = r.get(name)
            return float("nan") if value is None else float(value)

        turbidity, chlorophyll = reading("turbidity_ntu"), reading("chlorophyll_ug_l")
        tags.append("turbid-water" if turbidity > 10 else "clear-water" if turbidity < 5 else "")
        if s.get("green_ratio", 0) > 0.42:
            tags.append("green-water")
        if chlorophyll > 10:
            tags.append("algae-bloom")
        if s.get("brightness", 1) < 0.18:
            tags.append("low-light")
        if s.get("brightness", 0) > 0.55:
            tags.append("bright-glare")
        tags.append("rough-sea" if s.get("contrast", 0) > 0.09 else "calm-sea")
        temp = reading("water_temp_c")
        tags.append("warm-water" if temp > 19 else "cold-water" if temp < 12 else "")
        if reading("dissolved_oxygen_mg_l") < 5:
            tags.append("low-oxygen")
        if reading("salinity_psu") < 33:
            tags.append("freshwater-influence")
        if s.get("saturation", 0) > 0.35:
            tags.append("high-contrast-objects")
        tags = [t for t in tags if t]
        description = (
            f"{request.device_type} view: {', '.join(tags) or 'unremarkable water'}; "
            f"{temp:.1f} °C, turbidity {turbidity:.1f} NTU, chlorophyll {chlorophyll:.1f} µg/L."
        )
        return sanitize(tags, description)


def make_provider(settings: Settings) -> EnrichmentProvider:
    """The provider the settings name."""
    if settings.llm_provider == "heuristic":
        return HeuristicProvider(settings.llm_model)
    from core.openai_provider import OpenAIProvider

    return OpenAIProvider.from_settings(settings)
