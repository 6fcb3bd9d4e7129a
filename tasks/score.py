"""Score: every observation the champion has not scored yet gets a ``predictions`` row.

:func:`pending` lists the work (observations with an image and no prediction of this model
version, optionally within a window or one UTC day), :func:`partitions` groups it by
observation day (the unit the score flow fans out to workers), and :func:`score_rows` runs it:
DataLoader workers read the lake and prepare images exactly as training saw them
(:meth:`models.predictor.Predictor.prepare`), the network runs on the GPU when there is one,
and each batch is written at once with ``ON CONFLICT DO NOTHING``, so a re-run, a retry or two
workers on the same day never score an observation twice, and an interrupted run keeps what it
wrote. :func:`score_model` ties them together for one model; the Prefect tasks wrap them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import create_table_artifact
from sqlalchemy import exists, select
from sqlalchemy.orm import sessionmaker

from core import lineage
from core.database import insert_new, session_factory
from core.db import Observation, Prediction
from core.logs import stage_logger
from core.progress import StageProgress
from core.registry import alias_version
from core.registry import client as mlflow_client
from core.settings import Settings, get_settings
from core.store import Location, filesystem
from tasks.results import ScorePlan

if TYPE_CHECKING:
    import torch
    from mlflow.tracking import MlflowClient

    from models.predictor import Predictor


@dataclass(frozen=True)
class Window:
    """Which observations to score: ``[since, until)`` on ``observed_at``, both optional."""

    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def of(cls, *, day: str | None = None, last_days: float | None = None,
           since: datetime | None = None, until: datetime | None = None,
           now: datetime | None = None) -> Window:
        """One UTC ``day`` (``YYYY-MM-DD``), the ``last_days`` before ``now``, or since/until."""
        if day is not None:
            start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
            return cls(start, start + timedelta(days=1))
        if last_days is not None:
            return cls((now or datetime.now(UTC)) - timedelta(days=last_days), until)
        return cls(since, until)


def pending(sessions: sessionmaker, model: str, version: str, window: Window = Window()
            ) -> list[tuple[int, str, datetime]]:
    """(id, image key, observed_at) of observations with an image that ``model`` v``version``
    has not scored, oldest first."""
    scored = exists().where(Prediction.observation_id == Observation.id,
                            Prediction.model_name == model, Prediction.model_version == version)
    query = (select(Observation.id, Observation.image_key, Observation.observed_at)
             .where(Observation.image_key.is_not(None), ~scored)
             .order_by(Observation.observed_at, Observation.id))
    if window.since is not None:
        query = query.where(Observation.observed_at >= window.since)
    if window.until is not None:
        query = query.where(Observation.observed_at < window.until)
    with sessions() as session:
        return [tuple(row) for row in session.execute(query).all()]


def partitions(rows: list[tuple[int, str, datetime]]) -> dict[str, int]:
    """Pending observations per UTC observation day, the unit of fan-out."""
    return dict(sorted(Counter(_day(observed) for _, _, observed in rows).items()))


def _day(observed: datetime) -> str:
    if observed.tzinfo is None:  # SQLite returns naive datetimes; they were stored in UTC
        observed = observed.replace(tzinfo=UTC)
    return observed.astimezone(UTC).strftime("%Y-%m-%d")


class LakeImages:
    """A map-style dataset of (observation id, prepared image) read from the lake.

    An image that cannot be read or decoded yields ``None`` and the reason instead of
    stopping the run: the others are scored, and the failures are reported.
    """

    def __init__(self, rows: list[tuple[int, str, datetime]], lake: Location,
                 prepare: Callable[[bytes], torch.Tensor]) -> None:
        self.ids = [r[0] for r in rows]
        self.keys = [r[1] for r in rows]
        self.lake = lake
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        try:
            return self.ids[i], self.prepare(self.lake.fs.cat_file(self.lake.path(self.keys[i]))), ""
        except Exception as exc:  # a missing or corrupt blob fails this image only
            return self.ids[i], None, f"{type(exc).__name__}: {exc}"


def collate(items: list[tuple[int, Any, str]]) -> tuple[list[int], Any, dict[int, str]]:
    """Stack the images that were prepared; keep the ids and reasons of those that were not."""
    import torch

    good = [(i, image) for i, image, _ in items if image is not None]
    failed = {i: reason for i, image, reason in items if image is None}
    images = torch.stack([image for _, image in good]) if good else None
    return [i for i, _ in good], images, failed


@dataclass
class ScoreResult:
    model: str
    version: str | None
    scored: int = 0
    already: int = 0  # written meanwhile by another run (a retry, a second worker)
    failed: dict[int, str] = field(default_factory=dict)
    days: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    runs: list[str] = field(default_factory=list)  # the fan-out's child flow runs, if any


def prediction_rows(predictor: Predictor, ids: list[int | None], answered: list[dict[str, Any]],
                    flow_run_id: str | None, source: str = "batch",
                    content_hashes: list[str | None] | None = None) -> list[dict[str, Any]]:
    """``predictions`` rows for a batch's answers (:func:`models.predictor.answers`)."""
    hashes = content_hashes or [None] * len(ids)
    return [{"observation_id": i, "content_hash": h, "model_name": predictor.name,
             "model_version": predictor.version, "label": a.get("label"),
             "probabilities": a.get("probabilities"), "values": a.get("values"),
             "source": source, "flow_run_id": flow_run_id, "scored_at": datetime.now(UTC)}
            for i, h, a in zip(ids, hashes, answered, strict=True)]


def score_rows(sessions: sessionmaker, predictor: Predictor, rows: list[tuple[int, str, datetime]],
               lake: Location, *, batch_size: int, workers: int, flow_run_id: str | None,
               progress: Callable[[int, int], None] | None = None) -> ScoreResult:
    """Score ``rows`` with ``predictor`` and write each batch's predictions as it comes."""
    from torch.utils.data import DataLoader

    from models.datamodule import worker_context
    from models.predictor import answers

    result = ScoreResult(predictor.name, predictor.version, days=partitions(rows))
    loader = DataLoader(LakeImages(rows, lake, predictor.prepare), batch_size=batch_size,
                        num_workers=workers, collate_fn=collate,
                        multiprocessing_context=worker_context() if workers > 0 else None)
    done = 0
    for ids, images, failed in loader:
        result.failed.update(failed)
        if ids:
            answered = answers(predictor.spec, predictor.outputs(images))
            batch = prediction_rows(predictor, ids, answered, flow_run_id)
            with sessions() as session:
                new = insert_new(session, Prediction, batch)
                session.commit()
            result.scored += new
            result.already += len(ids) - new
        done += len(ids) + len(failed)
        if progress:
            progress(done, len(rows))
    return result


def score_model(sessions: sessionmaker, mlc: MlflowClient, settings: Settings, model: str,
                window: Window = Window(), *, version: str | None = None,
                flow_run_id: str | None = None,
                progress: Callable[[int, int], None] | None = None) -> ScoreResult:
    """Score what ``model``'s champion (or ``version``) has not scored in ``window``."""
    from core.hardware import Hardware
    from models.predictor import load_predictor

    if version is None:
        champion = alias_version(mlc, model)
        if champion is None:
            return ScoreResult(model, None, reason="no champion yet")
        version = str(champion.version)
    rows = pending(sessions, model, version, window)
    if not rows:
        return ScoreResult(model, version, reason="nothing left to score")
    predictor = load_predictor(mlc, model, version)
    workers = min(Hardware.from_settings(settings).loader_workers(), max(len(rows) // 256, 0))
    return score_rows(sessions, predictor, rows, filesystem(settings.lake_url, settings),
                      batch_size=settings.score_batch_size, workers=workers,
                      flow_run_id=flow_run_id, progress=progress)


def distribution(sessions: sessionmaker, model: str, version: str) -> list[dict[str, Any]]:
    """What ``model`` v``version`` predicted so far: count and share per class, or the mean
    of each regression target."""
    with sessions() as session:
        rows = session.execute(select(Prediction.label, Prediction.values).where(
            Prediction.model_name == model, Prediction.model_version == version)).all()
    labels = Counter(label for label, _ in rows if label is not None)
    if labels:
        total = sum(labels.values())
        return [{"model": model, "version": version, "class": name, "count": n,
                 "share": round(n / total, 4)} for name, n in labels.most_common()]
    values = [v for _, v in rows if v]
    targets = sorted({t for v in values for t in v})
    return [{"model": model, "version": version, "target": t, "count": len(values),
             "mean": round(sum(v[t] for v in values) / len(values), 4)} for t in targets]


def scored_by(sessions: sessionmaker, model: str, flow_run_ids: list[str]) -> int:
    """How many predictions of ``model`` the given flow runs wrote (the fan-out's children)."""
    from sqlalchemy import func

    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Prediction).where(
            Prediction.model_name == model, Prediction.flow_run_id.in_(flow_run_ids))) or 0


@task(name="score", retries=1, retry_delay_seconds=10, timeout_seconds=6 * 3600)
def score_task(model: str, version: str | None = None, day: str | None = None,
               last_days: float | None = None) -> ScoreResult:
    """Score ``model``'s unscored observations (one ``day`` or the ``last_days``, else all),
    with a progress bar and a progress artifact."""
    settings = get_settings()
    window = Window.of(day=day, last_days=last_days)
    with StageProgress(f"score-{model}", unit="image") as progress:
        result = score_model(session_factory(settings.db_url), mlflow_client(settings), settings,
                             model, window, version=version, flow_run_id=lineage.flow_run_id(),
                             progress=progress)
    log = stage_logger("score")
    log.info("score: %s v%s: %d scored, %d already scored, %d failed%s", model,
             result.version or "-", result.scored, result.already, len(result.failed),
             f" ({result.reason})" if result.reason else "")
    for obs, reason in list(result.failed.items())[:10]:
        log.warning("score: observation %s not scored: %s", obs, reason)
    return result


@task(name="score-partitions", retries=2, retry_delay_seconds=5, timeout_seconds=600)
def partitions_task(model: str, last_days: float | None = None) -> ScorePlan:
    """The champion version of ``model`` and its pending observations per day."""
    settings = get_settings()
    champion = alias_version(mlflow_client(settings), model)
    if champion is None:
        return ScorePlan(None)
    version = str(champion.version)
    rows = pending(session_factory(settings.db_url), model, version,
                   Window.of(last_days=last_days))
    return ScorePlan(version, partitions(rows))


@task(name="scored-by-runs", retries=2, retry_delay_seconds=5, timeout_seconds=300)
def scored_by_task(model: str, flow_run_ids: list[str]) -> int:
    return scored_by(session_factory(get_settings().db_url), model, flow_run_ids)


@task(name="score-distribution", retries=2, retry_delay_seconds=5, timeout_seconds=600)
def distribution_task(versions: dict[str, str]) -> list[dict[str, Any]]:
    """A table artifact of what each champion predicted: classes and shares, or target means."""
    sessions = session_factory(get_settings().db_url)
    table = [row for model, version in versions.items()
             for row in distribution(sessions, model, version)]
    if table:
        create_table_artifact(table, key="score-distribution",
                              description="predictions per model version: class shares or "
                                          "target means")
    return table
