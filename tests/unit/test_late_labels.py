"""``oceanml labels import``: late labels attached once to what ingestion stored, every bad
row refused with its reason, nothing stored before changed, on a real SQLite DB."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from core.db import Observation, Reject
from core.store import filesystem
from oceanml.cli import app
from oceanml.simulator import observation_keys, simulate, write_landing
from tasks.ingest import ingest

END = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def landed(settings, sessions):
    """40 observations, about half annotated; the others' labels are what arrives late."""
    simulated = list(simulate(days=1, devices=4, per_day=10, end=END, annotated_fraction=0.5))
    write_landing(filesystem(settings.landing_url), iter(simulated), faults=False)
    ingest(settings, sessions, now=END)
    with sessions() as s:
        by_key = {o.source_key: o for o in s.scalars(select(Observation))}
    pairs = []
    for sim in simulated:
        image, sidecar = observation_keys(sim)
        obs = by_key.get(image) or by_key.get(sidecar) or next(
            o for k, o in by_key.items() if k.endswith(sim.stem + ".jpg")
            or k.endswith(sim.stem + ".json"))
        pairs.append((sim, obs))
    return pairs


def stored_labels(sessions) -> dict[int, dict]:
    with sessions() as s:
        return {o.id: dict(o.labels or {}) for o in s.scalars(select(Observation))}


def withheld(pairs) -> list[dict]:
    """The plastic-detector label of every observation that came without labels."""
    return [{"observation_id": str(obs.id), "label_key": "plastic-detector",
             "value": sim.labels["plastic-detector"]}
            for sim, obs in pairs if not sim.annotated]


def run(path, *args):
    return CliRunner().invoke(app, ["labels", "import", str(path), *args])


def test_late_labels_attach_once_and_leave_stored_ones_alone(settings, sessions, landed,
                                                             tmp_path) -> None:
    before = stored_labels(sessions)
    rows = withheld(landed)
    assert rows and any(labels for labels in before.values())  # both kinds are there
    path = tmp_path / "late.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    first = run(path, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout) == {"rows": len(rows), "attached": len(rows), "already": 0,
                                        "rejected": {}, "estimates_updated": 0}
    after = stored_labels(sessions)
    for obs_id, labels in before.items():  # what was stored is still there, as it was
        assert {k: after[obs_id][k] for k in labels} == labels
    for row in rows:
        assert after[int(row["observation_id"])]["plastic-detector"] == row["value"]

    again = run(path, "--json")  # idempotent: nothing attached, nothing refused
    assert json.loads(again.stdout)["attached"] == 0
    assert json.loads(again.stdout)["already"] == len(rows)
    assert stored_labels(sessions) == after


def test_every_bad_row_is_refused_with_its_reason_and_changes_nothing(
        settings, sessions, landed, tmp_path) -> None:
    annotated = next(obs for sim, obs in landed if sim.annotated)
    fresh = [obs for sim, obs in landed if not sim.annotated]
    stored = annotated.labels["plastic-detector"]
    other = next(c for c in ("none", "light", "severe") if c != stored)
    good = {"observation_id": str(fresh[0].id), "label_key": "plastic-detector", "value": "light"}
    bad = [
        ({"observation_id": "999999", "label_key": "plastic-detector", "value": "none"},
         "unknown_observation"),
        ({"content_hash": "f" * 64, "label_key": "plastic-detector", "value": "none"},
         "unknown_observation"),
        ({"observation_id": str(fresh[1].id), "label_key": "kelp-detector", "value": "x"},
         "unknown_label_key"),
        ({"observation_id": str(fresh[1].id), "label_key": "plastic-detector",
          "value": "enormous"}, "label_out_of_range"),
        ({"content_hash": fresh[1].content_hash, "label_key": "water-quality",
          "value": "[0.5, 0.5, 1.5, 0.5]"}, "label_out_of_range"),
        ({"observation_id": str(fresh[2].id), "label_key": "plastic-detector",
          "value": "none"}, "conflicting_duplicate"),
        ({"observation_id": str(fresh[2].id), "label_key": "plastic-detector",
          "value": "severe"}, "conflicting_duplicate"),
        ({"observation_id": str(annotated.id), "label_key": "plastic-detector",
          "value": other}, "conflicts_with_stored"),
        ({"observation_id": str(fresh[3].id), "label_key": "plastic-detector", "value": ""},
         "missing_field"),
    ]
    before = stored_labels(sessions)
    path = tmp_path / "mixed.parquet"
    pd.DataFrame([good, *(row for row, _ in bad)]).to_parquet(path)
    result = run(path, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    expected = pd.Series([reason for _, reason in bad]).value_counts().to_dict()
    assert doc["rejected"] == dict(sorted(expected.items())) and doc["attached"] == 1
    after = stored_labels(sessions)
    assert after[fresh[0].id]["plastic-detector"] == "light"
    after[fresh[0].id].pop("plastic-detector")
    assert after == before  # every refused row left everything as it was
    with sessions() as s:
        rejects = s.scalars(select(Reject).where(Reject.source_key.like("labels:%"))).all()
    assert sorted(r.reason for r in rejects) == sorted(reason for _, reason in bad)
    assert all(r.detail for r in rejects)
    conflict = next(r for r in rejects if r.reason == "conflicts_with_stored")
    assert f"already has plastic-detector = {stored!r}" in conflict.detail
    run(path)  # again: no second reject row per refused row
    with sessions() as s:
        assert len(s.scalars(select(Reject).where(Reject.source_key.like("labels:%"))).all()) \
            == len(bad)


def test_a_file_that_is_not_a_label_file_is_refused_before_anything(tmp_path, settings) -> None:
    path = tmp_path / "x.csv"
    path.write_text("id,label\n1,none\n")
    result = run(path)
    assert result.exit_code == 2 and "columns must be observation_id" in result.output
