"""Build dataset: select from the DB, export a manifest, let DVC build and version the shards.

``dvc repro build@<model>`` runs :mod:`tasks.shards` only when the manifest or the params
changed, so an unchanged selection is no new version. The version is the DVC hash of the
output directory; it is pushed to the DVC remote and recorded in ``datasets``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from core import versioning
from core.database import session_factory
from core.db import SENSOR_COLUMNS, Dataset, Observation
from core.lineage import flow_run_id
from core.params import load_params, model_section
from core.settings import Settings, get_settings
from tasks.selection import Labelling, Selection, summarize
from tasks.shards import IMAGE_FEATURES, MANIFEST_COLUMNS, DatasetParams, resolved_params_path

_MANIFEST_QUERY_COLUMNS = (
    "content_hash", "image_key", "observed_at", "device_id", "device_type", "image_width",
    "image_height", "image_stats", "labels", "llm_tags", *SENSOR_COLUMNS,
)


@dataclass
class Selected:
    """A manifest and how the selection got there (counts per filter that left rows out)."""

    frame: pd.DataFrame
    reasons: dict[str, int]


def select_manifest(sessions: sessionmaker, params: DatasetParams | str,
                    now: datetime | None = None) -> Selected:
    """Observations with an image that pass ``params.selection`` and have a label from
    ``params``' label source, one row each, in time order so shards stay stable.

    The time window is applied in SQL (``observed_at`` is indexed); every other filter in
    Python, so the reasons count what each filter left out within the window."""
    if isinstance(params, str):  # every annotated image under that label key
        selection, labelling = Selection(), Labelling(params)
    else:
        selection, labelling = params.selection, params.labelling()
    since, until = selection.window(now or datetime.now(UTC))
    query = (select(*(getattr(Observation, c) for c in _MANIFEST_QUERY_COLUMNS))
             .where(Observation.image_key.is_not(None))
             .order_by(Observation.observed_at, Observation.content_hash))
    if since is not None:
        query = query.where(Observation.observed_at >= since)
    if until is not None:
        query = query.where(Observation.observed_at < until)
    selection = selection.model_copy(update={"since": since, "until": until, "last_days": None})
    records, reasons = [], []
    with sessions() as session:
        for row in session.execute(query).mappings():
            reason = selection.refusal(row, SENSOR_COLUMNS)
            labelled = None if reason else labelling.label(
                row["labels"], row["llm_tags"], {name: row[name] for name in SENSOR_COLUMNS})
            if reason is None and labelled is None:
                reason = "no_label"
            reasons.append(reason)
            if reason is None:
                records.append(_manifest_record(row, *labelled))
    return Selected(pd.DataFrame.from_records(records, columns=list(MANIFEST_COLUMNS)),
                    summarize(reasons))


def _manifest_record(row: Any, label: Any, source: str) -> dict[str, Any]:
    stats = row["image_stats"] or {}
    observed = row["observed_at"]
    if observed.tzinfo is None:  # SQLite hands back naive datetimes; they were stored as UTC
        observed = observed.replace(tzinfo=UTC)
    return {
        "content_hash": row["content_hash"],
        "image_key": row["image_key"],
        "label": json.dumps(label) if isinstance(label, list) else str(label),
        "observed_at": observed.isoformat(),
        "device_id": row["device_id"],
        "device_type": row["device_type"],
        **{name: row[name] for name in SENSOR_COLUMNS},
        **{f"image_{f}": stats.get(f) for f in IMAGE_FEATURES},
        "llm_tags": ",".join(row["llm_tags"] or []),
        "label_source": source,
    }


def write_manifest(frame: pd.DataFrame, path: Path) -> bool:
    """Write the manifest only when its content changed, so DVC sees an unchanged dep."""
    return write_if_changed(path, frame.to_csv(index=False, lineterminator="\n",
                                               float_format="%.6g"))


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` unless ``path`` holds it already (DVC hashes deps by content, but an
    untouched file also keeps its mtime, and a reader never sees a half-written one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


@dataclass
class DatasetVersion:
    name: str
    version: str
    path: str
    created: bool
    split_counts: dict[str, int]
    class_counts: dict[str, Any]
    label_sources: dict[str, int] = field(default_factory=dict)
    selection: dict[str, int] = field(default_factory=dict)


def stage_name(model: str) -> str:
    return f"build@{model}"


def dataset_dir(settings: Settings, model: str) -> Path:
    return settings.project_dir.resolve() / "data" / "datasets" / model


def check_labels(model: str, params: DatasetParams) -> None:
    """Weak-label classes must be classes of the model, or training would fail late."""
    from models.zoo import get_spec

    spec = get_spec(model)
    if params.label_source not in ("weak", "annotated_then_weak"):
        return
    if spec.task != "classification":
        raise ValueError(f"datasets.{model}: weak labels need a classification model")
    unknown = params.weak_labels.classes() - set(spec.outputs)
    if unknown:
        raise ValueError(f"datasets.{model}.weak_labels: {', '.join(sorted(unknown))} not among "
                         f"the classes {', '.join(spec.outputs)}")


def write_resolved_params(project: Path, model: str, profile: str | None) -> None:
    """The dataset section this build uses (profile applied), for the DVC stage to read."""
    section = model_section(load_params(project, profile), "datasets", model)
    write_if_changed(resolved_params_path(project, model),
                     json.dumps(section, default=str, sort_keys=True, indent=1) + "\n")


def build_dataset(settings: Settings, sessions: sessionmaker, model: str,
                  run_id: str | None = None, now: datetime | None = None,
                  profile: str | None = None) -> DatasetVersion:
    """Select, export, ``dvc repro``, ``dvc push`` and record; idempotent for unchanged input."""
    project = settings.project_dir.resolve()
    params = DatasetParams.load(project, model, profile)
    check_labels(model, params)
    selected = select_manifest(sessions, params, now)
    if selected.frame.empty:
        raise ValueError(f"no observation selected for {model!r} ({selected.reasons}): ingest "
                         f"labelled data, or widen datasets.{model}.selection in params.yaml")
    env = {"OCEANML_HOME": str(settings.home.resolve())}
    env |= {f"OCEANML_{k.upper()}": str(v) for k, v in
            (("lake_url", settings.lake_url), ("s3_endpoint_url", settings.s3_endpoint_url)) if v}
    out = dataset_dir(settings, model)
    # inputs written, built, read back and pushed under one project lock: a build of the
    # same model in another process (a retrain beside the nightly) cannot swap its inputs
    # or outputs for these in between
    with versioning.project_lock(project):
        write_manifest(selected.frame, project / "data" / "manifests" / f"{model}.csv")
        write_resolved_params(project, model, profile)
        versioning.ensure_repo(project, settings.dvc_remote_url, settings.s3_endpoint_url)
        version = versioning.repro(project, stage_name(model), env=env)
        card = json.loads((out / "card.json").read_text())
        reference = json.loads((out / "reference_stats.json").read_text())
        versioning.push(project, stage_name(model))
    with sessions() as session:
        row = session.scalar(select(Dataset).where(Dataset.name == model, Dataset.version == version))
        created = row is None
        if created:
            row = Dataset(
                name=model, version=version, path=str(out.relative_to(project)),
                split_counts=card["split_counts"], class_counts=card["class_counts"],
                reference_stats=reference,
                flow_run_id=run_id,
            )
            session.add(row)
            session.commit()
    return DatasetVersion(model, version, str(out), created, card["split_counts"],
                          card["class_counts"], card.get("label_sources", {}), selected.reasons)


def dataset_card(ds: DatasetVersion) -> str:
    """The dataset card as markdown: counts per split and class, label sources, selection."""
    classes = sorted({c for counts in ds.class_counts.values() for c in counts})
    lines = [f"# Dataset `{ds.name}` version `{ds.version}`", "",
             "| split | total | " + " | ".join(classes) + " |",
             "|---|---|" + "---|" * len(classes)]
    for split, total in ds.split_counts.items():
        counts = ds.class_counts.get(split, {})
        lines.append(f"| {split} | {total} | " + " | ".join(str(counts.get(c, 0)) for c in classes) + " |")
    if ds.label_sources:
        lines += ["", "Labels: " + ", ".join(f"{n} {src}" for src, n in
                                             sorted(ds.label_sources.items()))]
    if ds.selection:
        lines += ["", "Selection (observations with an image): " + ", ".join(
            f"{reason.replace('_', ' ')} {n}" for reason, n in ds.selection.items())]
    lines += ["", "new version" if ds.created else "unchanged input: no new version"]
    return "\n".join(lines)


@task(name="build-dataset", retries=1, retry_delay_seconds=10, timeout_seconds=3 * 3600)
def build_dataset_task(model: str, profile: str | None = None) -> DatasetVersion:
    """Build (or reuse) the dataset version of ``model`` and publish its card."""
    settings = get_settings()
    ds = build_dataset(settings, session_factory(settings.db_url), model, flow_run_id(),
                       profile=profile)
    create_markdown_artifact(dataset_card(ds), key=f"dataset-{model}", description="dataset card")
    return ds


def local_dataset(settings: Settings, model: str, version: str) -> Path:
    """A local directory holding dataset ``version``: the workspace copy when it is that
    version, else a verified restore from the DVC remote under ``data/versions/``."""
    project = settings.project_dir.resolve()
    workspace = dataset_dir(settings, model)
    if workspace.is_dir() and versioning.locked_out_hash(project, stage_name(model)) == version:
        return workspace
    dest = project / "data" / "versions" / f"{model}-{version}"
    if not dest.is_dir():
        versioning.ensure_repo(project, settings.dvc_remote_url, settings.s3_endpoint_url)
        versioning.restore(project, version, dest)
    return dest


@task(name="latest-dataset", retries=2, retry_delay_seconds=5, timeout_seconds=300)
def latest_dataset_task(model: str) -> str:
    """The newest recorded dataset version of ``model``."""
    settings = get_settings()
    with session_factory(settings.db_url)() as session:
        version = session.scalar(select(Dataset.version).where(Dataset.name == model)
                                 .order_by(Dataset.id.desc()).limit(1))
    if version is None:
        raise ValueError(f"no dataset of {model!r} yet: run `oceanml run dataset` first")
    return version
