"""What the stages hand to each other: the typed results the next task, the flows' summaries
and the CLI read by attribute (a typo is an ``AttributeError`` where it is made, not a
``KeyError`` three stages later).

The counting results a stage fills while it works stay beside it (:class:`tasks.ingest.
IngestResult`, :class:`tasks.dataset.DatasetVersion`, :class:`tasks.score.ScoreResult`);
these are the ones only their task returns, and the shapes of a whole branch or night.
Reports (an evaluation's metrics, a decision record, a drift feature) stay JSON documents:
they are stored as they are, in the DB and in MLflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.dataset import DatasetVersion
    from tasks.ingest import IngestResult
    from tasks.score import ScoreResult


@dataclass
class EnrichCounts:
    """What an enrich run counts as it works (:class:`tasks.enrich.EnrichResult`) and reports
    when it is done (:class:`EnrichSummary`): declared once, so the two cannot drift apart."""

    enriched: int = 0
    cache_hits: int = 0
    requests: int = 0
    failed: int = 0
    left: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped: str = ""
    retry_after_capped: int = 0  # provider waits longer than the cap, cut to it


@dataclass(kw_only=True)
class EnrichSummary(EnrichCounts):
    """One enrich run: what the provider answered, what it cost, and why it stopped early."""

    provider: str
    model: str
    errors: int = 0  # how many observations failed (their errors are in the run log)
    cost: float = 0.0


@dataclass(frozen=True)
class TrainingResult:
    """A recorded training: the registered version, its MLflow run, and whether this call
    trained it (``reused`` False) or found it trained on the same data and params."""

    model_version: str
    run_id: str
    training_key: str
    metrics: dict[str, float]
    reused: bool
    job_id: int | None = None
    artifacts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LatestTraining:
    model_version: str
    dataset_version: str


@dataclass(frozen=True)
class RecentRetrain:
    """The retrain job queued within the cool-down that makes a new one stand down."""

    job_id: int
    status: str
    queued_at: str
    model_version: str | None


@dataclass(frozen=True)
class RetrainClaim:
    """The training job a retrain now owns, or (``job_id`` None) the recent one it defers to."""

    job_id: int | None
    recent: RecentRetrain | None = None


@dataclass(frozen=True)
class EvaluationResult:
    """A version scored beside the champion it was compared with, on one dataset's test
    split; ``challenger`` and ``champion`` are the evaluation reports (JSON documents)."""

    model_version: str
    champion_version: str | None
    dataset_version: str
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    reused: bool = False


@dataclass(frozen=True)
class PromotionResult:
    """A promotion decision: ``champion_version`` is the champion after it ("" before any),
    ``previous_version`` the one it was decided against; ``decision`` is the record made now
    (None when nothing was decided in this call)."""

    promoted: bool
    reason: str
    decided_now: bool
    champion_version: str
    previous_version: str
    decision: dict[str, Any] | None = None


@dataclass(frozen=True)
class DriftOutcome:
    """A drift check's verdict (``drift``, ``none``, ``insufficient`` or ``no_reference``);
    ``performance`` is the label-free accuracy estimate of a classification champion."""

    drifted: bool
    verdict: str
    reason: str
    n_current: int = 0
    reference_dataset_version: str | None = None
    share_drifted: float = 0.0
    performance: dict[str, Any] | None = None


@dataclass(frozen=True)
class ScorePlan:
    """The champion version the score fan-out pins, and its pending observations per day."""

    version: str | None
    days: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BranchFailure:
    """A branch that failed: its error's first line, cut and without a credential."""

    error: str


@dataclass(frozen=True)
class BranchResult:
    """One model's night, stage by stage."""

    dataset: DatasetVersion
    train: TrainingResult
    evaluate: EvaluationResult
    promote: PromotionResult
    score: ScoreResult
    drift: DriftOutcome


@dataclass(frozen=True)
class WatchResult:
    """One model's hour in the monitor: what its champion scored, and the drift verdict."""

    score: ScoreResult
    drift: DriftOutcome


@dataclass(frozen=True)
class FleetResult:
    """A nightly or monitor run: the shared stages, then each model's outcome by name.
    ``profile`` says what the nightly trained under ("" for the monitor)."""

    ingest: IngestResult
    enrich: EnrichSummary
    models: dict[str, BranchResult | WatchResult | BranchFailure]
    profile: str = ""

    def failed(self) -> list[str]:
        return [m for m, o in self.models.items() if isinstance(o, BranchFailure)]


@dataclass(frozen=True)
class RetrainResult:
    """A retrain: skipped within the cool-down (``recent`` says for which job), or its
    dataset, training, evaluation and decision."""

    skipped: bool
    reason: str
    job_id: int | None = None
    recent: RecentRetrain | None = None
    dataset: DatasetVersion | None = None
    train: TrainingResult | None = None
    evaluate: EvaluationResult | None = None
    promote: PromotionResult | None = None


def counts_of(result: EnrichCounts) -> dict[str, Any]:
    """The counting fields of ``result``, whatever else its class holds."""
    return {f.name: getattr(result, f.name) for f in fields(EnrichCounts)}


def as_document(result: Any) -> Any:
    """``result`` (a result, or a dict or list of them) as plain data, for the CLI's JSON."""
    if isinstance(result, dict):
        return {k: as_document(v) for k, v in result.items()}
    if isinstance(result, list):
        return [as_document(v) for v in result]
    return asdict(result) if is_dataclass(result) and not isinstance(result, type) else result
