"""The metadata schema (SQLAlchemy 2.0), one definition for SQLite and PostgreSQL.

Every stage records what it decided here, pointing back to MLflow run ids, model versions,
DVC dataset versions and Prefect flow run ids, so a number in a report can be traced.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Double,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: DateTime(timezone=True)}


# Python None must be SQL NULL (not JSON 'null') so "IS NULL" finds pending rows.
NULLABLE_JSON = JSON(none_as_null=True)

SENSOR_COLUMNS = (
    "water_temp_c",
    "salinity_psu",
    "ph",
    "turbidity_ntu",
    "chlorophyll_ug_l",
    "dissolved_oxygen_mg_l",
)


class Observation(Base):
    """One accepted observation: an image and/or readings with time, place and device."""

    __tablename__ = "observations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    source_key: Mapped[str] = mapped_column(Text)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    device_type: Mapped[str] = mapped_column(String(32))
    observed_at: Mapped[datetime] = mapped_column(index=True)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    water_temp_c: Mapped[float | None] = mapped_column(Float)
    salinity_psu: Mapped[float | None] = mapped_column(Float)
    ph: Mapped[float | None] = mapped_column(Float)
    turbidity_ntu: Mapped[float | None] = mapped_column(Float)
    chlorophyll_ug_l: Mapped[float | None] = mapped_column(Float)
    dissolved_oxygen_mg_l: Mapped[float | None] = mapped_column(Float)
    extra_readings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    image_key: Mapped[str | None] = mapped_column(Text)
    image_width: Mapped[int | None] = mapped_column(Integer)
    image_height: Mapped[int | None] = mapped_column(Integer)
    image_stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    llm_tags: Mapped[list[str] | None] = mapped_column(NULLABLE_JSON)
    llm_description: Mapped[str | None] = mapped_column(Text)
    enrichment: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)
    ingest_flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class IngestedFile(Base):
    """Ledger of landing keys already handled, so ingestion is incremental and idempotent."""

    __tablename__ = "ingested_files"

    source_key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))  # ingested | rejected
    observation_id: Mapped[int | None] = mapped_column(ForeignKey("observations.id"))
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class Reject(Base):
    """What ingestion refused, with the reason: nothing is lost silently."""

    __tablename__ = "rejects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_key: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(64), index=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    content_hash: Mapped[str | None] = mapped_column(String(64))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    rejected_at: Mapped[datetime] = mapped_column(default=utcnow)


class EnrichmentCache(Base):
    """LLM answers keyed by (content hash, prompt version, provider, model): re-runs are free."""

    __tablename__ = "enrichment_cache"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tags: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A DVC-versioned dataset; ``version`` is the DVC hash of the shard directory."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    split_counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    class_counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reference_stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


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


class Prediction(Base):
    """What a champion said about an observation (batch scoring) or an image (the endpoint).

    Unique on (observation, model, version): a re-run scores nothing twice and a new champion
    scores again. Online answers have no observation id (SQL NULLs never collide), and carry
    the image's content hash, so drift can still tell what the endpoint was shown.
    """

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("observation_id", "model_name", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    observation_id: Mapped[int | None] = mapped_column(ForeignKey("observations.id"))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    model_version: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(64))
    probabilities: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)
    values: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)
    source: Mapped[str] = mapped_column(String(16), default="batch")  # batch | online
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    scored_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def to_json(value: Any) -> str:
    """JSON columns' text. orjson is several times faster than ``json`` for the small dicts
    every observation carries (readings, image statistics, labels); ``json`` takes what
    orjson refuses (integers beyond 64 bits, keys that are not strings)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so tasks may write concurrently."""
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # pre-ping: a connection the server dropped (a PostgreSQL restart) is replaced, not used
    engine = create_engine(url, future=True, json_serializer=to_json, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def init_db(engine: Engine) -> None:
    """Bring the schema to this version's head revision (:mod:`core.schema`)."""
    from core.schema import migrate

    migrate(engine)


def insert_new(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> int:
    """Insert ``rows``, skipping those a unique constraint already holds; returns how many
    were new. One statement per call (``ON CONFLICT DO NOTHING``, SQLite and PostgreSQL), so
    two writers racing on the same rows both succeed and neither duplicates."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"insert_new: no ON CONFLICT for {dialect}")
    key = model.__table__.primary_key.columns
    statement = insert(model).on_conflict_do_nothing().returning(*key)
    return len(session.execute(statement, rows).all())  # RETURNING names only rows inserted


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker:
    """A sessionmaker over a ready schema: the one entry point stages use."""
    engine = make_engine(url)
    init_db(engine)
    return sessionmaker(engine, expire_on_commit=False)
