"""Temperature scaling: an over-confident model's ECE falls once its temperature is fit, the
argmax never moves, and the network answers at its temperature."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.calibration import (
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability,
)
from tests.registered import conv_net


def overconfident(n: int = 4000, k: int = 4, sharpen: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z), and a model that answers ``sharpen * z``: right as often
    as a calibrated one, far surer of itself."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return z * sharpen, labels


def test_an_overconfident_model_is_calibrated_by_its_temperature() -> None:
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.15)  # it finds the over-sharpening
    summary = calibration_summary(logits, labels.numpy(), t)
    assert summary["ece_before"] > 0.1
    assert summary["ece_after"] < summary["ece_before"] / 3
    assert summary["nll_after"] < summary["nll_before"]  # what the temperature minimises
    assert summary["bins"] == 15 and summary["n"] == len(labels)
    before = torch.softmax(logits, 1).argmax(1)
    after = torch.softmax(logits / t, 1).argmax(1)
    assert torch.equal(before, after)  # accuracy and F1 cannot change


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy() -> None:
    probs = np.array([[0.9, 0.1]] * 10)  # 90% sure every time ...
    labels = np.array([0] * 6 + [1] * 4)  # ... right 60% of the time
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3)
    table = reliability(probs, labels)
    assert table["count"][13] == 10 and table["accuracy"][13] == pytest.approx(0.6)
    assert expected_calibration_error(np.array([[0.6, 0.4]] * 10), labels) == \
        pytest.approx(0.0)


def test_the_network_answers_at_its_temperature() -> None:
    net = conv_net(1)
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        raw = net.raw(images)
        assert torch.allclose(net(images), raw)  # a new network: temperature 1
        net.temperature.fill_(2.5)
        assert torch.allclose(net(images), raw / 2.5)
    assert "temperature" in net.state_dict()  # stored with the version


def test_nothing_to_fit_on_leaves_the_temperature_at_one() -> None:
    assert fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long)) == 1.0
