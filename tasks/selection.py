"""Which observations a dataset takes, and where each one's label comes from.

Both are read from a model's ``datasets.<model>`` section of ``params.yaml`` (which DVC tracks),
so changing a filter or a weak-label rule is a new manifest and a new dataset version. Kept
free of heavy imports: the ``build@<model>`` DVC stage loads it too.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from core.labels import KNOWN_DEVICE_TYPES, READINGS_LABELS, water_quality_label
from core.llm import TAG_VOCABULARY

LABEL_SOURCES = ("annotated", "weak", "annotated_then_weak", "readings_then_annotated")
LabelSource = Literal["annotated", "weak", "annotated_then_weak", "readings_then_annotated"]


def _strict(cls: type, section: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The section's keys, refusing unknown ones by name: a typo must not silently select all."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(sorted(known))}")
    return dict(section)


def _check_tags(tags: Iterable[str], where: str) -> tuple[str, ...]:
    tags = tuple(tags)
    unknown = [t for t in tags if t not in TAG_VOCABULARY]
    if unknown:
        raise ValueError(f"{where}: tag(s) {', '.join(unknown)} are not in the vocabulary "
                         f"({', '.join(TAG_VOCABULARY)})")
    return tags


def _as_utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Selection:
    """Filters an observation must pass to enter a dataset; the defaults keep everything.

    ``since``/``until`` pin an absolute window (reproducible); ``last_days`` is a window that
    slides with the run date (what a nightly wants). ``devices`` accepts shell globs
    (``buoy-*``). Tag filters need the observation to be enriched.
    """

    since: datetime | None = None
    until: datetime | None = None
    last_days: float | None = None
    devices: tuple[str, ...] = ()
    device_types: tuple[str, ...] = ()
    require_tags: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    min_image_side: int = 0
    min_contrast: float = 0.0
    brightness: tuple[float, float] = (0.0, 1.0)
    require_readings: bool = False

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None, where: str = "selection") -> Selection:
        values = _strict(cls, section or {}, where)
        for name in ("devices", "device_types"):
            values[name] = tuple(values.get(name) or ())
        unknown = [t for t in values["device_types"] if t not in KNOWN_DEVICE_TYPES]
        if unknown:  # a misspelt type would select nothing, without a word
            raise ValueError(f"{where}.device_types: {', '.join(unknown)} not among the known "
                             f"types ({', '.join(KNOWN_DEVICE_TYPES)})")
        for name in ("require_tags", "exclude_tags"):
            values[name] = _check_tags(values.get(name) or (), f"{where}.{name}")
        values["since"], values["until"] = _as_utc(values.get("since")), _as_utc(values.get("until"))
        low, high = values.get("brightness") or (0.0, 1.0)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"{where}.brightness: need 0 <= low <= high <= 1, got {low}, {high}")
        values["brightness"] = (float(low), float(high))
        return cls(**values)

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
class WeakRule:
    tags: tuple[str, ...]
    label: str


@dataclass(frozen=True)
class WeakLabels:
    """LLM tags as weak labels: the first rule whose tags the observation all has gives the
    label; an enriched observation matching no rule gets ``default`` (or is left out)."""

    rules: tuple[WeakRule, ...] = ()
    default: str | None = None

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None, where: str = "weak_labels") -> WeakLabels:
        values = _strict(cls, section or {}, where)
        rules = []
        for i, rule in enumerate(values.get("rules") or ()):
            rule = _strict(WeakRule, rule, f"{where}.rules[{i}]")
            rules.append(WeakRule(_check_tags(rule["tags"], f"{where}.rules[{i}].tags"),
                                  str(rule["label"])))
        default = values.get("default")
        return cls(tuple(rules), None if default is None else str(default))

    def classes(self) -> set[str]:
        return {r.label for r in self.rules} | ({self.default} if self.default else set())

    def label(self, tags: Iterable[str] | None) -> str | None:
        if tags is None:
            return None
        have = set(tags)
        for rule in self.rules:
            if set(rule.tags) <= have:
                return rule.label
        return self.default


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

    def __post_init__(self) -> None:
        if self.source not in LABEL_SOURCES:
            raise ValueError(f"label_source {self.source!r}: expected one of {LABEL_SOURCES}")
        if self.source in ("weak", "annotated_then_weak") and not self.weak.rules \
                and self.weak.default is None:
            raise ValueError(f"label_source {self.source!r} needs weak_labels rules")
        if self.source == "readings_then_annotated" and self.label_key not in READINGS_LABELS:
            raise ValueError(f"label_source {self.source!r}: no label is computed from readings "
                             f"for {self.label_key!r} (only {', '.join(READINGS_LABELS)})")

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
