"""Build dataset: select from the DB, export a manifest, let DVC build and version the shards.

``dvc repro build@<model>`` runs :mod:`tasks.shards` only when the manifest or the params
changed, so an unchanged selection is no new version. The version is the DVC hash of the
output directory; it is pushed to the DVC remote and recorded in ``datasets``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from oceanml import versioning
from oceanml.db import SENSOR_COLUMNS, Dataset, Observation, session_factory
from oceanml.lineage import flow_run_id
from oceanml.settings import Settings, get_settings
from tasks.shards import IMAGE_FEATURES, MANIFEST_COLUMNS, DatasetParams


def select_manifest(sessions: sessionmaker, label_key: str) -> pd.DataFrame:
    """Labelled observations with an image, one row each, ordered by time for stable shards."""
    with sessions() as session:
        rows = session.scalars(
            select(Observation)
            .where(Observation.image_key.is_not(None))
            .order_by(Observation.observed_at, Observation.content_hash)
        ).all()
    records = []
    for obs in rows:
        label = (obs.labels or {}).get(label_key)
        if label is None:
            continue
        stats = obs.image_stats or {}
        records.append({
            "content_hash": obs.content_hash,
            "image_key": obs.image_key,
            "label": json.dumps(label) if isinstance(label, list) else str(label),
            "observed_at": obs.observed_at.isoformat(),
            "device_id": obs.device_id,
            "device_type": obs.device_type,
            **{name: getattr(obs, name) for name in SENSOR_COLUMNS},
            **{f"image_{f}": stats.get(f) for f in IMAGE_FEATURES},
            "llm_tags": ",".join(obs.llm_tags or []),
        })
    return pd.DataFrame.from_records(records, columns=list(MANIFEST_COLUMNS))


def write_manifest(frame: pd.DataFrame, path: Path) -> bool:
    """Write the manifest only when its content changed, so DVC sees an unchanged dep."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = frame.to_csv(index=False, lineterminator="\n", float_format="%.6g")
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


def stage_name(model: str) -> str:
    return f"build@{model}"


def dataset_dir(settings: Settings, model: str) -> Path:
    return settings.project_dir.resolve() / "data" / "datasets" / model


def build_dataset(settings: Settings, sessions: sessionmaker, model: str,
                  run_id: str | None = None) -> DatasetVersion:
    """Select, export, ``dvc repro``, ``dvc push`` and record; idempotent for unchanged input."""
    project = settings.project_dir.resolve()
    params = DatasetParams.load(project / "params.yaml", model)
    frame = select_manifest(sessions, params.label_key)
    if frame.empty:
        raise ValueError(f"no labelled observations for {model!r}: ingest annotated data first")
    write_manifest(frame, project / "data" / "manifests" / f"{model}.csv")
    versioning.ensure_repo(project, settings.dvc_remote_url, settings.s3_endpoint_url)
    env = {f"OCEANML_{k.upper()}": str(v) for k, v in
           (("lake_url", settings.lake_url), ("s3_endpoint_url", settings.s3_endpoint_url)) if v}
    version = versioning.repro(project, stage_name(model), env=env)
    versioning.push(project, stage_name(model))
    out = dataset_dir(settings, model)
    card = json.loads((out / "card.json").read_text())
    with sessions() as session:
        row = session.scalar(select(Dataset).where(Dataset.name == model, Dataset.version == version))
        created = row is None
        if created:
            row = Dataset(
                name=model, version=version, path=str(out.relative_to(project)),
                split_counts=card["split_counts"], class_counts=card["class_counts"],
                reference_stats=json.loads((out / "reference_stats.json").read_text()),
                flow_run_id=run_id,
            )
            session.add(row)
            session.commit()
    return DatasetVersion(model, version, str(out), created, card["split_counts"],
                          card["class_counts"])


def dataset_card(ds: DatasetVersion) -> str:
    """The dataset card as markdown: counts per split and class."""
    classes = sorted({c for counts in ds.class_counts.values() for c in counts})
    lines = [f"# Dataset `{ds.name}` version `{ds.version}`", "",
             "| split | total | " + " | ".join(classes) + " |",
             "|---|---|" + "---|" * len(classes)]
    for split, total in ds.split_counts.items():
        counts = ds.class_counts.get(split, {})
        lines.append(f"| {split} | {total} | " + " | ".join(str(counts.get(c, 0)) for c in classes) + " |")
    lines += ["", "new version" if ds.created else "unchanged input: no new version"]
    return "\n".join(lines)


@task(name="build-dataset", retries=1, retry_delay_seconds=10)
def build_dataset_task(model: str) -> dict[str, Any]:
    """Build (or reuse) the dataset version of ``model`` and publish its card."""
    settings = get_settings()
    ds = build_dataset(settings, session_factory(settings.db_url), model, flow_run_id())
    create_markdown_artifact(dataset_card(ds), key=f"dataset-{model}", description="dataset card")
    return ds.__dict__


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


@task(name="latest-dataset")
def latest_dataset_task(model: str) -> str:
    """The newest recorded dataset version of ``model``."""
    settings = get_settings()
    with session_factory(settings.db_url)() as session:
        version = session.scalar(select(Dataset.version).where(Dataset.name == model)
                                 .order_by(Dataset.id.desc()).limit(1))
    if version is None:
        raise ValueError(f"no dataset of {model!r} yet: run `oceanml run dataset` first")
    return version
