"""Labels that arrive after the observations: attached once, checked like ingestion checks,
and turned into the realized accuracy of each champion on the windows it was estimated on.

A label file (CSV or Parquet) has one row per annotation: ``observation_id`` or
``content_hash`` (which observation), ``label_key`` (the model's label key, e.g.
``plastic-detector``) and ``value`` (a class name, or a JSON list of a regressor's targets in
[0, 1]). A row is attached only where the observation has no label under that key yet; the
same label again is ``already`` known; anything else is refused with a reason in ``rejects``
(``unknown_observation``, ``unknown_label_key``, ``label_out_of_range``,
``conflicting_duplicate`` within the file, ``conflicts_with_stored``, ``missing_field``), so a
re-import changes nothing and no stored label is ever overwritten.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from core.db import Observation, Prediction, Reject
from core.records import PerformanceEstimate
from models.zoo import ZOO, ModelSpec, get_spec
from tasks.performance import realized

COLUMNS = ("observation_id", "content_hash", "label_key", "value")


@dataclass
class LabelImport:
    rows: int = 0
    attached: int = 0
    already: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> rows
    estimates_updated: int = 0


def read_label_file(path: Path) -> pd.DataFrame:
    """The rows of a CSV or Parquet label file, every column as text (missing as None)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        raise ValueError(f"{path}: a label file is .csv or .parquet")
    unknown = sorted(set(frame.columns) - set(COLUMNS))
    if unknown or not {"label_key", "value"} <= set(frame.columns) or not (
            {"observation_id", "content_hash"} & set(frame.columns)):
        raise ValueError(f"{path}: columns must be observation_id and/or content_hash, "
                         f"label_key and value (found {', '.join(frame.columns)})")
    return frame.astype(object).map(
        lambda v: None if v is None or pd.isna(v) or str(v).strip() == "" else str(v).strip())


def label_specs() -> dict[str, ModelSpec]:
    """Label key -> the spec whose values it holds."""
    return {spec.label_key: spec for spec in (get_spec(name) for name in ZOO)}


def parse_value(spec: ModelSpec, raw: str) -> Any:
    """The stored form of a label (a class name, or a list of floats), or ValueError why not."""
    if spec.task == "classification":
        if raw not in spec.outputs:
            raise ValueError(f"{raw!r} is not a class of {spec.name} ({', '.join(spec.outputs)})")
        return raw
    try:
        values = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"{raw!r} is not a JSON list of {spec.num_outputs} numbers") from None
    if (not isinstance(values, list) or len(values) != spec.num_outputs
            or not all(isinstance(v, int | float) and 0.0 <= v <= 1.0 for v in values)):
        raise ValueError(f"{raw!r}: {spec.name} takes {spec.num_outputs} values in [0, 1] "
                         f"({', '.join(spec.outputs)})")
    return [float(v) for v in values]


def _row_key(source: str, index: int, row: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:12]
    return f"labels:{source}#{index}:{digest}"


def import_labels(sessions: sessionmaker, frame: pd.DataFrame, source: str,
                  flow_run_id: str | None = None) -> LabelImport:
    """Attach the valid rows of ``frame``, refuse the others in ``rejects`` (once: a
    re-import adds no second reject row), then recompute the realized figures of every
    estimate of the models the file labels."""
    specs = label_specs()
    result = LabelImport(rows=len(frame))
    rows = [{k: v if isinstance(v, str) else None for k, v in row.items()}  # NaN: missing
            for row in frame.to_dict("records")]
    refusals: list[tuple[int, dict[str, Any], str, str, str | None]] = []
    with sessions() as session:
        observations = _observations(session, rows)
        groups: dict[tuple[int, str], list[tuple[int, Any]]] = {}
        found: dict[int, Any] = {}
        for index, row in enumerate(rows):
            obs = observations.get(("id", row.get("observation_id"))) or observations.get(
                ("hash", row.get("content_hash")))
            reason, detail, value = _check(row, obs, specs)
            if reason is not None:
                refusals.append((index, row, reason, detail, obs.content_hash if obs else None))
                continue
            found[obs.id] = obs
            groups.setdefault((obs.id, row["label_key"]), []).append((index, value))
        for (obs_id, key), entries in groups.items():
            obs, values = found[obs_id], [v for _, v in entries]
            stored = (obs.labels or {}).get(key)
            if any(v != values[0] for v in values):  # which one is right is not known
                why = (f"observation {obs_id} gets {len(values)} different {key} labels in "
                       "this file", "conflicting_duplicate")
            elif stored is not None and stored != values[0]:
                why = (f"observation {obs_id} already has {key} = {stored!r}, the file says "
                       f"{values[0]!r}: a stored label is never changed", "conflicts_with_stored")
            else:
                if stored is None:
                    obs.labels = {**(obs.labels or {}), key: values[0]}
                    result.attached += 1
                else:
                    result.already += 1
                continue
            refusals += [(i, rows[i], why[1], why[0], obs.content_hash) for i, _ in entries]
        _record_refusals(session, refusals, source, flow_run_id)
        session.commit()
    result.rejected = dict(sorted(Counter(r[2] for r in refusals).items()))
    labelled = sorted({specs[key].name for _, key in groups})
    result.estimates_updated = sum(update_realized(sessions, get_spec(m)) for m in labelled)
    return result


def _observations(session: Any, rows: list[dict[str, Any]]) -> dict[tuple[str, Any], Any]:
    """The observations the rows name, by ``("id", text id)`` and ``("hash", content hash)``."""
    ids = {int(r["observation_id"]) for r in rows
           if (r.get("observation_id") or "").isdigit()}
    hashes = {r["content_hash"] for r in rows if r.get("content_hash")}
    found = list(session.scalars(select(Observation).where(Observation.id.in_(ids)))) + list(
        session.scalars(select(Observation).where(Observation.content_hash.in_(hashes))))
    out: dict[tuple[str, Any], Any] = {}
    for obs in found:
        out[("id", str(obs.id))] = obs
        out[("hash", obs.content_hash)] = obs
    return out


def _check(row: dict[str, Any], obs: Any, specs: dict[str, ModelSpec]
           ) -> tuple[str | None, str, Any]:
    """(reason, detail, parsed value): reason None when the row may be attached."""
    if not row.get("label_key") or not row.get("value") or not (
            row.get("observation_id") or row.get("content_hash")):
        return "missing_field", "a row needs observation_id or content_hash, label_key and value", None
    if obs is None:
        which = (f"id {row['observation_id']}" if row.get("observation_id")
                 else f"content hash {row['content_hash']}")
        return "unknown_observation", f"no observation with {which} was ingested", None
    spec = specs.get(row["label_key"])
    if spec is None:
        return ("unknown_label_key", f"{row['label_key']!r} is no model's label key "
                f"({', '.join(sorted(specs))})", None)
    try:
        return None, "", parse_value(spec, row["value"])
    except ValueError as exc:
        return "label_out_of_range", str(exc), None


def _record_refusals(session: Any, refusals: list, source: str, flow_run_id: str | None) -> None:
    """One reject row per refused file row, unless an earlier import of it recorded one."""
    keys = {_row_key(source, i, row): (reason, detail, content_hash)
            for i, row, reason, detail, content_hash in refusals}
    known = set(session.scalars(select(Reject.source_key).where(Reject.source_key.in_(keys))))
    for key, (reason, detail, content_hash) in keys.items():
        if key not in known:
            session.add(Reject(source_key=key, reason=reason, detail=detail,
                               content_hash=content_hash, flow_run_id=flow_run_id))


def update_realized(sessions: sessionmaker, spec: ModelSpec) -> int:
    """Recompute the realized accuracy and macro-F1 of every estimate of ``spec``'s model
    from the labels known now: the version's answers on the window's labelled observations.
    Returns how many estimates have realized figures."""
    if spec.task != "classification":
        return 0
    updated = 0
    with sessions() as session:
        for estimate in session.scalars(select(PerformanceEstimate).where(
                PerformanceEstimate.model_name == spec.name)):
            pairs = session.execute(
                select(Observation.labels, Prediction.label)
                .join(Prediction, Prediction.observation_id == Observation.id)
                .where(Prediction.model_name == spec.name,
                       Prediction.model_version == estimate.model_version,
                       Observation.observed_at >= estimate.window_since,
                       Observation.observed_at < estimate.window_until)).all()
            known = [(labels[spec.label_key], label) for labels, label in pairs
                     if (labels or {}).get(spec.label_key) in spec.outputs
                     and label in spec.outputs]
            if not known:
                continue
            truth = np.asarray([spec.outputs.index(t) for t, _ in known])
            preds = np.asarray([spec.outputs.index(p) for _, p in known])
            estimate.realized = {**realized(truth, preds, spec.num_outputs), "n": len(known)}
            estimate.realized_at = datetime.now(UTC)
            updated += 1
        session.commit()
    return updated
