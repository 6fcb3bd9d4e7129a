"""The metadata schema (SQLAlchemy 2.0), one definition for SQLite and PostgreSQL.

Every stage records what it decided here, pointing back to MLflow run ids, model versions,
DVC dataset versions and Prefect flow run ids, so a number in a report can be traced.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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
    request_id: Mapped[str | None] = mapped_column(String(64))  # online: the request's id
    client: Mapped[str | None] = mapped_column(String(64))  # online: the key's name
    # online, beside a release (core.releases): champion, canary or shadow; how long the
    # answer took; and, for an answer the model failed to give, why (no label or values)
    role: Mapped[str | None] = mapped_column(String(16))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(String(64))


# The model lifecycle's tables live in core.records, the API keys' in core.keys; importing
# them here puts them on Base.metadata whichever module a process imports first (migrations
# compare against it).
from core import keys, records, releases  # noqa: E402, F401
