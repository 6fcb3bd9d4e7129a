"""What the model lifecycle records, one table each: trainings and their jobs, evaluations,
drift reports and performance estimates, promotion decisions, champion changes and the
per-model lock. Every row points back to MLflow run ids, model versions, DVC dataset versions
and Prefect flow run ids, so a number in a report can be traced."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Double,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import NULLABLE_JSON, Base, utcnow


class TrainingRun(Base):
    """One training of (model, dataset version, params); ``training_key`` makes it idempotent."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64))
    training_key: Mapped[str] = mapped_column(String(64), unique=True)
    dataset_version: Mapped[str] = mapped_column(String(64))
    mlflow_run_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(16))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingJob(Base):
    """A training a person can watch, from the moment it is queued: status (queued, running,
    completed, failed, cancelled), epoch of total, progress, the error, the worker, timestamps.
    ``trigger`` says who asked (nightly, retrain, manual); the retrain cool-down reads it."""

    __tablename__ = "training_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    dataset_version: Mapped[str | None] = mapped_column(String(64))  # None: being built
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    max_epochs: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[float] = mapped_column(Double, default=0.0)  # as migration 0002 made it
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(16))
    reused: Mapped[bool] = mapped_column(Boolean, default=False)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    queued_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Evaluation(Base):
    """Challenger and champion scored on the same test split."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("model_name", "model_version", "champion_version", "dataset_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(16))
    champion_version: Mapped[str] = mapped_column(String(16), default="")
    dataset_version: Mapped[str] = mapped_column(String(64))
    challenger_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    champion_metrics: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DriftRecord(Base):
    """Per-feature drift of recent observations against the champion's training data."""

    __tablename__ = "drift_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64))
    reference_dataset_version: Mapped[str] = mapped_column(String(64))
    n_current: Mapped[int] = mapped_column(Integer)
    drifted: Mapped[bool] = mapped_column(Boolean)
    verdict: Mapped[str] = mapped_column(String(16), default="none")  # drift|none|insufficient
    features: Mapped[dict[str, Any]] = mapped_column(default=dict)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PerformanceEstimate(Base):
    """A classification champion's accuracy and macro-F1 on a drift window, estimated from
    its calibrated probabilities (``tasks.performance``) with the interval, the test figure
    it was held against and whether it counted as performance drift; the realized figures
    once labels for the window's observations were imported (``oceanml labels import``)."""

    __tablename__ = "performance_estimates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    model_version: Mapped[str] = mapped_column(String(16))
    drift_record_id: Mapped[int | None] = mapped_column(Integer)
    window_since: Mapped[datetime] = mapped_column()
    window_until: Mapped[datetime] = mapped_column()
    n: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(16))
    estimated: Mapped[dict[str, Any]] = mapped_column(default=dict)  # metric -> estimate, low, high
    test_value: Mapped[float | None] = mapped_column(Double)
    drop: Mapped[float] = mapped_column(Double)
    drifted: Mapped[bool] = mapped_column(Boolean)
    realized: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)  # accuracy, ..., n
    realized_at: Mapped[datetime | None] = mapped_column()
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Promotion(Base):
    """Every promotion decision, either way, with its reason."""

    __tablename__ = "promotions"
    __table_args__ = (UniqueConstraint("model_name", "challenger_version", "champion_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64))
    challenger_version: Mapped[str] = mapped_column(String(16))
    champion_version: Mapped[str] = mapped_column(String(16), default="")
    promoted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DecisionRecord(Base):
    """Every decision on a model's champion, automatic or by hand, with every check behind it:
    what an operator reads to challenge one."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    candidate_version: Mapped[str] = mapped_column(String(16))
    champion_version: Mapped[str | None] = mapped_column(String(16))
    dataset_version: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # gate | force | rollback
    promoted: Mapped[bool] = mapped_column(Boolean)  # the candidate became champion
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    checks: Mapped[list[str]] = mapped_column(JSON, default=list)  # [{name, value, ...}]
    interval: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)
    reason: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChampionChange(Base):
    """Every change of a model's champion, append-only: the source of truth the MLflow
    ``champion`` alias follows (``core.champion_history``)."""

    __tablename__ = "champion_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(16))
    previous_version: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))  # promote | rollback | adopt
    reason: Mapped[str] = mapped_column(Text, default="")
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    decided_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelLock(Base):
    """One row per model; on PostgreSQL, promotions of a model lock it ``FOR UPDATE``."""

    __tablename__ = "model_locks"

    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
