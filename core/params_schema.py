"""The schema of ``params.yaml``: one typed model per section, unknown keys forbidden.

:func:`core.params.load_file` validates the whole file (profile applied) before a stage runs,
and a bad key or value is refused with its place in the file (``datasets.algae-bloom.
selection.devise: unknown key``). A default lives here once (the training hyperparameters
have none: ``params.yaml`` writes them); where ``params.yaml`` writes a key, its value wins.
The stages read their sections as these models, or as subclasses that add the stage's own
methods (``tasks.shards.DatasetParams``, ``tasks.selection.Selection``,
``tasks.train.TrainParams``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.labels import KNOWN_DEVICE_TYPES, READINGS_LABELS
from core.llm import TAG_VOCABULARY

LABEL_SOURCES = ("annotated", "weak", "annotated_then_weak", "readings_then_annotated")
LabelSource = Literal["annotated", "weak", "annotated_then_weak", "readings_then_annotated"]


class Section(BaseModel):
    """A section of ``params.yaml``: typed, immutable, and no key it does not know."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        """A key written with no value (``per_model:``) is the same as one not written."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


def _tags(tags: Iterable[str]) -> tuple[str, ...]:
    tags = tuple(tags)
    unknown = [t for t in tags if t not in TAG_VOCABULARY]
    if unknown:
        raise ValueError(f"tag(s) {', '.join(unknown)} are not in the vocabulary "
                         f"({', '.join(TAG_VOCABULARY)})")
    return tags


class SelectionParams(Section):
    """Filters an observation must pass to enter a dataset; the defaults keep everything."""

    since: datetime | None = None
    until: datetime | None = None
    last_days: float | None = Field(None, gt=0)
    devices: tuple[str, ...] = ()
    device_types: tuple[str, ...] = ()
    require_tags: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    min_image_side: int = Field(0, ge=0)
    min_contrast: float = Field(0.0, ge=0.0, le=1.0)
    brightness: tuple[float, float] = (0.0, 1.0)
    require_readings: bool = False

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)

    @field_validator("device_types")
    @classmethod
    def _known_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in value if t not in KNOWN_DEVICE_TYPES]
        if unknown:  # a misspelt type would select nothing, without a word
            raise ValueError(f"{', '.join(unknown)} not among the known types "
                             f"({', '.join(KNOWN_DEVICE_TYPES)})")
        return value

    @field_validator("require_tags", "exclude_tags")
    @classmethod
    def _vocabulary(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _tags(value)

    @field_validator("brightness")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"need 0 <= low <= high <= 1, got {low}, {high}")
        return value


class WeakRule(Section):
    tags: tuple[str, ...] = Field(min_length=1)
    label: str

    @field_validator("tags")
    @classmethod
    def _vocabulary(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _tags(value)


class WeakLabels(Section):
    """LLM tags as weak labels: the first rule whose tags the observation all has gives the
    label; an enriched observation matching no rule gets ``default`` (or is left out)."""

    rules: tuple[WeakRule, ...] = ()
    default: str | None = None

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


class DatasetSection(Section):
    """``datasets.<model>``: which observations, where their labels come from, how they are
    cut into shards."""

    label_key: str
    label_source: LabelSource = "annotated"
    image_size: int = Field(gt=0)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    shard_rows: int = Field(512, gt=0)
    reference_sample: int = Field(2000, gt=0)
    weak_labels: WeakLabels = WeakLabels()
    selection: SelectionParams = SelectionParams()

    @field_validator("split")
    @classmethod
    def _sums_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(value) - 1.0) > 1e-6 or min(value) < 0:
            raise ValueError(f"three ratios summing to 1, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _labels_can_be_found(self) -> DatasetSection:
        if self.label_source in ("weak", "annotated_then_weak") and not self.weak_labels.rules \
                and self.weak_labels.default is None:
            raise ValueError(f"label_source {self.label_source!r} needs weak_labels rules")
        if self.label_source == "readings_then_annotated" and self.label_key not in READINGS_LABELS:
            raise ValueError(f"label_source {self.label_source!r}: no label is computed from "
                             f"readings for {self.label_key!r} (only {', '.join(READINGS_LABELS)})")
        return self


class TrainSection(Section):
    """``train.<model>``: what the trainer fits with (where it runs is a worker setting).

    The hyperparameters have no default in code: ``params.yaml`` is the one place they are
    written, so the trainer, the module and the file cannot disagree."""

    backbone: str | None = None  # None: the zoo's architecture for the model
    image_size: int = Field(gt=0)
    max_epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    seed: int
    patience: int = Field(gt=0)
    weights: str | None = None  # a local state dict, or a torchvision weights name


class PromotionPolicy(Section):
    """The gates of one model: an absolute floor, the gain over the champion by a margin at a
    one-sided confidence (paired bootstrap), no slice dropping past a bound."""

    metric: str = "macro_f1"
    higher_is_better: bool = True
    floor: float = 0.5  # for a lower-is-better metric, the worst value allowed
    margin: float = Field(0.01, ge=0)
    max_slice_drop: float = Field(0.10, ge=0)
    confidence: float = Field(0.9, gt=0, lt=1)
    bootstrap_samples: int = Field(2000, gt=0)

    def gain(self, new: float, old: float) -> float:
        """How much better ``new`` is than ``old`` (negative when worse), in either direction."""
        return new - old if self.higher_is_better else old - new


class PolicyOverride(Section):
    """``promote.per_model.<model>``: the keys of a policy this model sets otherwise."""

    metric: str | None = None
    higher_is_better: bool | None = None
    floor: float | None = None
    margin: float | None = Field(None, ge=0)
    max_slice_drop: float | None = Field(None, ge=0)
    confidence: float | None = Field(None, gt=0, lt=1)
    bootstrap_samples: int | None = Field(None, gt=0)


class PromoteSection(PromotionPolicy):
    per_model: dict[str, PolicyOverride] = {}

    def policy(self, model: str) -> PromotionPolicy:
        """The defaults with ``model``'s overrides laid over them."""
        overrides = self.per_model.get(model)
        values = self.model_dump(exclude={"per_model"})
        if overrides is not None:
            values |= overrides.model_dump(exclude_none=True)
        return PromotionPolicy(**values)


class PerformancePolicy(Section):
    """``drift.performance``: how far below its test figure a champion's label-free estimate
    may fall before the window counts as performance drift."""

    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    drop: float = Field(0.1, ge=0, le=1)
    confidence: float = Field(0.9, gt=0, lt=1)
    bootstrap_samples: int = Field(500, gt=0)


class DriftThresholds(Section):
    """``drift``: when a feature, and a window, counts as drifted."""

    psi_threshold: float = Field(0.2, gt=0)
    ks_pvalue: float = Field(0.01, gt=0, lt=1)
    share_threshold: float = Field(0.3, gt=0, le=1)
    min_samples: int = Field(50, gt=0)
    embedding_sample: int = Field(256, gt=0)  # images per side the embedding check reads
    embedding_pvalue: float = Field(0.01, gt=0, lt=1)
    permutations: int = Field(200, gt=0)


class DriftSection(DriftThresholds):
    performance: PerformancePolicy = PerformancePolicy()

    def thresholds(self) -> DriftThresholds:
        return DriftThresholds(**self.model_dump(exclude={"performance"}))


class ReleasePolicy(Section):
    """``release``: how long a release of a candidate runs by default, and what the release
    check needs of what the endpoint served before it promotes the candidate."""

    max_hours: float = Field(24.0, gt=0)  # the default deadline; at it, decided on what it has
    min_requests: int = Field(200, gt=0)  # answers per version before an early decision
    max_error_ratio: float = Field(1.5, ge=1)  # candidate error rate / champion's (+ 0.5 %)
    max_latency_ratio: float = Field(1.2, ge=1)  # candidate p99 / champion p99 (canary)
    min_agreement: float = Field(0.8, ge=0, le=1)  # same label as the champion (shadow)
    required_gain: float = Field(0.0, ge=0)  # estimated accuracy over the champion's
    confidence: float = Field(0.9, gt=0, lt=1)
    bootstrap_samples: int = Field(500, gt=0)


class ProfileModel(Section):
    datasets: dict[str, Any] = {}
    train: dict[str, Any] = {}


class Profile(Section):
    """``profiles.<name>``: keys of every model's ``datasets`` and ``train`` sections, and per
    model under ``models``, laid over the defaults for machines that cannot train those."""

    description: str = ""
    datasets: dict[str, Any] = {}
    train: dict[str, Any] = {}
    models: dict[str, ProfileModel] = {}


class ParamsFile(Section):
    """The whole of ``params.yaml``."""

    fleet: tuple[str, ...] = ()
    datasets: dict[str, DatasetSection] = {}
    train: dict[str, TrainSection] = {}
    profiles: dict[str, Profile] = {}
    promote: PromoteSection = PromoteSection()
    drift: DriftSection = DriftSection()
    release: ReleasePolicy = ReleasePolicy()
