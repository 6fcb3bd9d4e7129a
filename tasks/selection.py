"""Which observations a dataset takes, and where each one's label comes from.

Both are read from a model's ``datasets.<model>`` section of ``params.yaml`` (which DVC tracks),
so changing a filter or a weak-label rule is a new manifest and a new dataset version. Kept
free of heavy imports: the ``build@<model>`` DVC stage loads it too.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.labels import READINGS_LABELS, water_quality_label
from core.params_schema import LabelSource, SelectionParams, WeakLabels


def _as_utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Selection(SelectionParams):
    """``selection`` of a dataset section, with how it is applied: ``since``/``until`` pin an
    absolute window (reproducible); ``last_days`` is a window that slides with the run date
    (what a nightly wants); ``devices`` accepts shell globs (``buoy-*``); tag filters need
    the observation to be enriched."""

    def window(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        """The time window as absolute bounds (half-open: ``since <= t < until``)."""
        since = self.since
        if self.last_days is not None:
            sliding = now - timedelta(days=self.last_days)
            since = sliding if since is None else max(since, sliding)
        return since, self.until

    def refusal(self, row: Mapping[str, Any], sensors: Iterable[str]) -> str | None:
        """Why ``row`` is left out (the filter's name), or None when it is selected.

        The time window is applied in SQL before this; it is checked again here so the
        function is complete on its own.
        """
        observed = _as_utc(row["observed_at"])
        if (self.since and observed < self.since) or (self.until and observed >= self.until):
            return "time_window"
        if self.device_types and row["device_type"] not in self.device_types:
            return "device_types"
        if self.devices and not any(fnmatch.fnmatchcase(row["device_id"], p) for p in self.devices):
            return "devices"
        if self.require_tags or self.exclude_tags:
            tags = row.get("llm_tags")
            if tags is None:
                return "not_enriched"
            if not set(self.require_tags) <= set(tags):
                return "require_tags"
            if set(self.exclude_tags) & set(tags):
                return "exclude_tags"
        if min(row.get("image_width") or 0, row.get("image_height") or 0) < self.min_image_side:
            return "min_image_side"
        stats = row.get("image_stats") or {}
        if stats.get("contrast", 0.0) < self.min_contrast:
            return "min_contrast"
        brightness = stats.get("brightness")
        if brightness is not None and not self.brightness[0] <= brightness <= self.brightness[1]:
            return "brightness"
        if self.require_readings and any(row.get(s) is None for s in sensors):
            return "require_readings"
        return None


@dataclass(frozen=True)
class Labelling:
    """Where labels come from: annotations under ``label_key``, weak labels from the LLM tags
    (an annotation wins), or the observation's own sensor readings.

    ``readings_then_annotated`` is for a label that is a function of the readings (the
    water-quality indices): computed from the observation's own readings where they are
    complete, so every such observation is labelled, not only the annotated few, and all on
    one scale; the annotation only where readings are missing.
    """

    label_key: str
    source: LabelSource = "annotated"
    weak: WeakLabels = field(default_factory=WeakLabels)

    def label(self, labels: Mapping[str, Any] | None, tags: list[str] | None,
              readings: Mapping[str, Any] | None = None) -> tuple[Any, str] | None:
        """(label, "annotated" | "weak" | "readings") for one observation, or None."""
        if self.source == "readings_then_annotated" and readings is not None \
                and all(v is not None for v in readings.values()):
            return READINGS_LABELS[self.label_key](dict(readings)), "readings"
        if self.source != "weak":
            annotated = (labels or {}).get(self.label_key)
            if annotated is not None:
                if self.label_key == "water-quality":
                    annotated = water_quality_label(annotated)
                return annotated, "annotated"
        if self.source in ("weak", "annotated_then_weak"):
            weak = self.weak.label(tags)
            if weak is not None:
                return weak, "weak"
        return None


def summarize(reasons: Iterable[str | None]) -> dict[str, int]:
    """Counts of what the selection kept and why the rest was left out, for the card."""
    counts = Counter(r or "selected" for r in reasons)
    return dict(sorted(counts.items()))
