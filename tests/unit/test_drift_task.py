"""The drift stage's logic on real ingested observations, SQLite and an MLflow registry.

``detect_drift`` is what ``drift_task`` runs; the task only adds the table artifact, the
``oceanml.drift.detected`` event and the log. The reference is the ``reference_stats.json``
a real shard build writes, stored in a ``Dataset`` row as ``build_dataset`` stores it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import Dataset, Observation
from core.params_schema import DriftThresholds
from core.records import DriftRecord
from core.registry import client, ensure_registered_model, set_champion
from core.store import filesystem
from oceanml.simulator import simulate, write_landing
from tasks.dataset import select_manifest, write_manifest
from tasks.drift import detect_drift
from tasks.ingest import ingest
from tasks.shards import DatasetParams, build

END = datetime(2026, 11, 20, tzinfo=UTC)
MODEL = "plastic-detector"
SINCE = END - timedelta(days=2)
THRESHOLDS = DriftThresholds()


def shifted(stats: dict[str, Any]) -> dict[str, Any]:
    """The same reference with every numeric feature moved far above anything observed."""
    numeric = {}
    for name, ref in stats["numeric"].items():
        delta = 10 * (max(ref["edges"]) - min(ref["edges"])) + 10
        numeric[name] = {**ref, "sample": [v + delta for v in ref["sample"]],
                         "edges": [e + delta for e in ref["edges"]], "mean": ref["mean"] + delta}
    return {**stats, "numeric": numeric}


@pytest.fixture
def reference(settings, sessions, tmp_path) -> dict[str, Any]:
    """Two days of observations ingested; dataset ``ds-1`` built from them and stored, and
    ``ds-shifted`` whose numeric features lie far from every observation."""
    write_landing(filesystem(settings.landing_url),
                  simulate(days=2, devices=4, per_day=30, end=END, annotated_fraction=0.9),
                  faults=False)
    ingest(settings, sessions, now=END)
    write_manifest(select_manifest(sessions, MODEL).frame, tmp_path / "m.csv")
    build(tmp_path / "m.csv", tmp_path / "ds", DatasetParams(label_key=MODEL, image_size=32), settings)
    stats = json.loads((tmp_path / "ds" / "reference_stats.json").read_text())
    with sessions() as s:
        for version, ref in (("ds-1", stats), ("ds-shifted", shifted(stats))):
            s.add(Dataset(name=MODEL, version=version, path="data/datasets/x",
                          reference_stats=ref))
        s.commit()
    return stats


def records(sessions) -> list[tuple]:
    with sessions() as s:
        return [(r.model_name, r.reference_dataset_version, r.n_current, r.drifted, r.features,
                 r.flow_run_id) for r in s.scalars(select(DriftRecord).order_by(DriftRecord.id))]


def recent(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Observation)
                        .where(Observation.observed_at >= SINCE))


@pytest.mark.parametrize("fallback", [None, "ds-unknown"])
def test_without_a_reference_there_is_no_verdict_and_no_record(
        settings, sessions, reference, fallback) -> None:
    report = detect_drift(sessions, client(settings), MODEL, fallback, THRESHOLDS, SINCE, "r")
    assert (report.drifted, report.n_current, report.reason, report.reference_dataset_version) \
        == (False, 0, "no reference dataset yet", None)
    assert records(sessions) == []


def test_before_any_champion_the_fallback_is_the_reference_and_each_check_is_recorded(
        settings, sessions, reference) -> None:
    mlc = client(settings)
    n = recent(sessions)
    assert n >= THRESHOLDS.min_samples  # enough for a verdict
    report = detect_drift(sessions, mlc, MODEL, "ds-1", THRESHOLDS, SINCE, "run-1")
    assert report.reference_dataset_version == "ds-1" and report.n_current == n
    assert not report.drifted  # the reference is these very observations
    assert set(report.features) == {*reference["numeric"], "device_type"}
    assert report.reason.startswith(f"0/{len(report.features)} features drifted (none)")
    assert records(sessions) == [(MODEL, "ds-1", n, False, report.features, "run-1")]

    # No reuse: every check is a point of the drift history, even on unchanged data.
    again = detect_drift(sessions, mlc, MODEL, "ds-1", THRESHOLDS, SINCE, "run-2")
    assert again == report
    assert records(sessions) == [(MODEL, "ds-1", n, False, report.features, "run-1"),
                                 (MODEL, "ds-1", n, False, report.features, "run-2")]


def test_the_champions_training_data_is_the_reference(settings, sessions, reference) -> None:
    mlc = client(settings)
    ensure_registered_model(mlc, MODEL)
    mlc.create_model_version(MODEL, source=str(settings.home),
                             tags={"dataset_version": "ds-shifted", "training_key": "k"})
    set_champion(mlc, MODEL, "1")
    report = detect_drift(sessions, mlc, MODEL, "ds-1", THRESHOLDS, SINCE, "run-1")
    assert report.reference_dataset_version == "ds-shifted"
    assert report.drifted
    numeric = [f for f in report.features.values() if f["kind"] == "numeric"]
    assert numeric and all(f["drifted"] for f in numeric)
    assert not report.features["device_type"]["drifted"]
    assert report.share_drifted == round(len(numeric) / len(report.features), 4)
    assert records(sessions) == [(MODEL, "ds-shifted", recent(sessions), True, report.features,
                                  "run-1")]


def test_too_few_recent_observations_are_recorded_without_a_verdict(
        settings, sessions, reference) -> None:
    later = END + timedelta(days=1)
    report = detect_drift(sessions, client(settings), MODEL, "ds-1", THRESHOLDS, later, None)
    assert (report.drifted, report.verdict, report.n_current, report.features) == \
        (False, "insufficient", 0, {})
    assert report.reason == ("not enough recent data: 0 observations in the window (< 50); "
                             "no verdict")
    assert records(sessions) == [(MODEL, "ds-1", 0, False, {}, None)]


@pytest.fixture
def champion(settings, sessions, reference) -> str:
    """A registered champion trained on ``ds-1`` that has scored every observation."""
    from tasks.score import score_model
    from tests.registered import conv_net, register

    mlc = client(settings)
    version = register(mlc, settings, conv_net(3), "k-view")
    set_champion(mlc, MODEL, version)
    score_model(sessions, mlc, settings, MODEL)
    return version


def storm_day(settings, sessions) -> datetime:
    """A storm day after the reference days, ingested and scored by the champion; its start."""
    from tasks.score import score_model

    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=4, per_day=60, end=END + timedelta(days=1),
                           scenario="storm", seed=9), faults=False)
    ingest(settings, sessions, now=END + timedelta(days=1))
    score_model(sessions, client(settings), settings, MODEL)
    return END


def test_the_champions_view_of_a_normal_day_is_checked_and_stays_calm(
        settings, sessions, reference, champion) -> None:
    last_day = END - timedelta(days=1)
    report = detect_drift(sessions, client(settings), MODEL, None, THRESHOLDS, last_day, "r",
                          settings=settings)
    embedding, predictions = report.features["embedding"], report.features["predictions"]
    # every image of the reference's sample (its train split is under 256), and of the day
    assert embedding["n_ref"] == len(reference["embedding_sample"]) > THRESHOLDS.min_samples
    assert embedding["n_cur"] == 120
    assert embedding["pvalue"] > THRESHOLDS.embedding_pvalue and not embedding["drifted"]
    assert predictions["kind"] == "categorical" and not predictions["drifted"]
    assert report.verdict == "none", report.reason


def test_a_storm_moves_the_champions_embeddings_and_that_alone_is_drift(
        settings, sessions, champion) -> None:
    since = storm_day(settings, sessions)
    thresholds = DriftThresholds(share_threshold=1.0)  # only the model's view can decide
    report = detect_drift(sessions, client(settings), MODEL, None, thresholds, since, "r",
                          settings=settings)
    embedding = report.features["embedding"]
    assert embedding["drifted"] and embedding["pvalue"] < 0.01, embedding
    assert report.verdict == "drift" and report.drifted
    assert "the model's view moved (embedding" in report.reason
    with sessions() as s:
        assert s.scalar(select(DriftRecord.verdict).order_by(DriftRecord.id.desc())) == "drift"


def test_a_drifted_check_is_logged_to_mlflow_with_its_picture_and_table(
        settings, sessions, reference) -> None:
    mlc = client(settings)
    ensure_registered_model(mlc, MODEL)
    mlc.create_model_version(MODEL, source=str(settings.home),
                             tags={"dataset_version": "ds-shifted", "training_key": "k"})
    set_champion(mlc, MODEL, "1")
    report = detect_drift(sessions, mlc, MODEL, None, THRESHOLDS, SINCE, "r", settings=settings)
    assert report.drifted and report.mlflow_run_id
    run = mlc.get_run(report.mlflow_run_id)
    assert run.data.tags["verdict"] == "drift" and run.data.tags["model"] == MODEL
    assert run.data.metrics["share_drifted"] == report.share_drifted
    logged = {a.path for a in mlc.list_artifacts(report.mlflow_run_id, "drift")}
    assert logged == {"drift/drifted_features.png", "drift/features.json"}
    from PIL import Image

    picture = Image.open(mlc.download_artifacts(report.mlflow_run_id,
                                                "drift/drifted_features.png"))
    assert picture.width > 600 and picture.height > 250


def test_the_drift_table_reads_the_same_for_every_test_drifted_first() -> None:
    from tasks.drift_report import drift_table

    rows = drift_table({
        "ph": {"kind": "numeric", "psi": 0.01, "ks_stat": 0.02, "ks_pvalue": 0.5,
               "ref_mean": 8.1, "cur_mean": 8.1, "drifted": False},
        "tag:rough-sea": {"kind": "share", "ref_share": 0.15, "cur_share": 0.45,
                          "pvalue": 1e-9, "drifted": True},
        "embedding": {"kind": "embedding", "mmd2": 0.012, "pvalue": 0.005, "n_ref": 256,
                      "n_cur": 200, "drifted": True},
    })
    assert [r["feature"] for r in rows] == ["tag:rough-sea", "embedding", "ph"]
    assert all(list(r) == ["feature", "drifted", "test", "statistic", "p-value", "reference",
                           "current"] for r in rows)
    assert rows[0] == {"feature": "tag:rough-sea", "drifted": "DRIFT", "test": "two-proportion",
                       "statistic": "+30%", "p-value": "1e-09", "reference": "15%",
                       "current": "45%"}
    assert rows[2]["drifted"] == "" and rows[2]["reference"] == "mean 8.1"
