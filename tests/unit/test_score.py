"""Batch scoring on real simulator images, a real SQLite DB, lake and MLflow store.

Versions are small untrained CNNs registered the way the trainer registers them, so the
answers depend on each image and two versions answer differently.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from core.db import Observation, Prediction
from core.registry import client, set_champion
from core.store import filesystem
from models.predictor import load_predictor
from models.preprocess import model_input
from oceanml.simulator import simulate, write_landing
from tasks.ingest import ingest
from tasks.score import Window, distribution, partitions, pending, score_model, score_rows
from tests.registered import SPEC, conv_net, register

END = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def observations(settings, sessions) -> int:
    """Two days of simulated observations, ingested; returns how many have an image."""
    write_landing(filesystem(settings.landing_url),
                  simulate(days=2, devices=3, per_day=12, end=END, annotated_fraction=0.5),
                  faults=False)
    ingest(settings, sessions, now=END + timedelta(days=1))
    with sessions() as s:
        return s.scalar(select(func.count()).where(Observation.image_key.is_not(None)))


def count(sessions, **where) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Prediction).filter_by(**where))


def test_no_champion_scores_nothing(settings, sessions, observations) -> None:
    result = score_model(sessions, client(settings), settings, SPEC.name)
    assert (result.version, result.scored, result.reason) == (None, 0, "no champion yet")
    assert count(sessions) == 0


def test_scoring_writes_one_row_per_observation_and_a_rerun_scores_nothing(
        settings, sessions, observations) -> None:
    mlc = client(settings)
    set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(1), "v1"))
    first = score_model(sessions, mlc, settings, SPEC.name, flow_run_id="run-1")
    assert (first.version, first.scored, first.already, first.failed) == ("1", observations, 0, {})
    assert sum(first.days.values()) == observations and len(first.days) == 2
    assert count(sessions, model_version="1", flow_run_id="run-1") == observations

    again = score_model(sessions, mlc, settings, SPEC.name, flow_run_id="run-2")
    assert (again.scored, again.reason) == (0, "nothing left to score")
    assert count(sessions) == observations

    with sessions() as s:
        row = s.scalars(select(Prediction)).first()
    assert row.label in SPEC.outputs and set(row.probabilities) == set(SPEC.outputs)
    assert sum(row.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert row.label == max(row.probabilities, key=row.probabilities.get)
    assert row.source == "batch" and row.values is None


def test_a_new_champion_scores_again_and_the_old_rows_stay(settings, sessions,
                                                           observations) -> None:
    mlc = client(settings)
    set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(1), "v1"))
    score_model(sessions, mlc, settings, SPEC.name)
    set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(2), "v2"))
    second = score_model(sessions, mlc, settings, SPEC.name)
    assert (second.version, second.scored) == ("2", observations)
    assert count(sessions, model_version="1") == count(sessions, model_version="2") == observations


def test_rows_another_run_wrote_meanwhile_are_counted_not_duplicated(settings, sessions,
                                                                     observations) -> None:
    """Two workers on the same day (or a retry after a crash): the second writes nothing."""
    mlc = client(settings)
    version = register(mlc, settings, conv_net(1), "v1")
    predictor = load_predictor(mlc, SPEC.name, version, device="cpu")
    rows = pending(sessions, SPEC.name, version)
    lake = filesystem(settings.lake_url)
    first = score_rows(sessions, predictor, rows[:10], lake, batch_size=4, workers=0,
                       flow_run_id="a")
    second = score_rows(sessions, predictor, rows, lake, batch_size=8, workers=0, flow_run_id="b")
    assert (first.scored, second.scored, second.already) == (10, observations - 10, 10)
    assert count(sessions) == observations


def test_a_corrupt_image_fails_alone_with_its_reason_and_stays_pending(settings, sessions,
                                                                      observations) -> None:
    mlc = client(settings)
    set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(1), "v1"))
    victim = pending(sessions, SPEC.name, "1")[3]
    lake = filesystem(settings.lake_url)
    original = lake.fs.cat_file(lake.path(victim[1]))
    lake.fs.pipe_file(lake.path(victim[1]), b"not a jpeg at all")

    result = score_model(sessions, mlc, settings, SPEC.name)
    assert result.scored == observations - 1
    assert list(result.failed) == [victim[0]] and "Error" in result.failed[victim[0]]
    assert [r[0] for r in pending(sessions, SPEC.name, "1")] == [victim[0]]

    lake.fs.pipe_file(lake.path(victim[1]), original)  # repaired: the next run scores it
    assert score_model(sessions, mlc, settings, SPEC.name).scored == 1


def test_a_day_window_scores_that_day_only(settings, sessions, observations) -> None:
    mlc = client(settings)
    set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(1), "v1"))
    days = partitions(pending(sessions, SPEC.name, "1"))
    first_day = next(iter(days))
    result = score_model(sessions, mlc, settings, SPEC.name, Window.of(day=first_day))
    assert result.scored == days[first_day] and result.days == {first_day: days[first_day]}
    assert partitions(pending(sessions, SPEC.name, "1")) == {
        d: n for d, n in days.items() if d != first_day}


def test_batch_answers_are_the_network_on_the_training_preprocessing(settings, sessions,
                                                                     observations) -> None:
    """What is stored equals softmax(net(model_input(image))) for the stored image."""
    mlc = client(settings)
    net = conv_net(1)
    set_champion(mlc, SPEC.name, register(mlc, settings, net, "v1"))
    score_model(sessions, mlc, settings, SPEC.name)
    lake = filesystem(settings.lake_url)
    with sessions() as s:
        pairs = s.execute(select(Observation.image_key, Prediction.probabilities)
                          .join(Prediction, Prediction.observation_id == Observation.id)
                          .limit(5)).all()
    for key, probabilities in pairs:
        image = model_input(lake.fs.cat_file(lake.path(key)), 32)
        with torch.no_grad():
            expected = torch.softmax(net(image[None]), dim=1)[0].numpy()
        got = np.array([probabilities[c] for c in SPEC.outputs])
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_distribution_counts_every_prediction(settings, sessions, observations) -> None:
    mlc = client(settings)
    set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(1), "v1"))
    score_model(sessions, mlc, settings, SPEC.name)
    table = distribution(sessions, SPEC.name, "1")
    assert sum(r["count"] for r in table) == observations
    assert sum(r["share"] for r in table) == pytest.approx(1.0, abs=1e-3)
    assert {r["class"] for r in table} <= set(SPEC.outputs)
