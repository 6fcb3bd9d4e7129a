"""Drift reads what the endpoint served: the champion's online answers in the window against
its answers before, a feature group of their own (``online:predictions``) that counts as the
model's view. Images sent to a real replica change their kind: drift says so; the same kind
again: it does not."""

from __future__ import annotations

import base64
import io
import time
from datetime import UTC, datetime

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import func, select

from core.db import Prediction
from core.params_schema import DriftThresholds
from core.registry import client, set_champion
from tasks.drift import compute_drift
from tasks.drift_model_view import online_features
from tests.registered import SPEC, colour_net, register
from tests.serving.conftest import serves_version
from tests.serving.test_endpoint import PREDICT

THRESHOLDS = DriftThresholds(min_samples=50)


def scenes(n: int, tint: tuple[int, int, int], seed: int) -> list[str]:
    """``n`` noisy images around one colour, base64."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pixels = np.clip(rng.normal(tint, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def send(served, bodies: list[str]) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        for body in bodies:
            assert http.post(PREDICT, json={"image": body}).status_code == 200


def recorded(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Prediction))


def settle(sessions, n: int) -> datetime:
    deadline = time.monotonic() + 10
    while recorded(sessions) < n:
        assert time.monotonic() < deadline, f"{recorded(sessions)} of {n} recorded"
        time.sleep(0.1)
    return datetime.now(UTC)


def test_a_shift_in_what_the_endpoint_served_is_drift_of_the_models_view(
        settings, sessions, served) -> None:
    mlc = client(settings)
    version = register(mlc, settings, colour_net(), "colour")
    set_champion(mlc, SPEC.name, version)
    probe = {"image": scenes(1, (0, 0, 0), seed=0)[0]}
    assert serves_version(served, probe, version, timeout=10)
    start = recorded(sessions)
    send(served, scenes(150, (40, 90, 170), seed=1))  # open sea: blue
    calm = settle(sessions, start + 150)
    send(served, scenes(150, (40, 90, 170), seed=2))  # the same kind of image
    settle(sessions, start + 300)
    same = online_features(sessions, SPEC.name, version, calm, None, THRESHOLDS)
    assert not same["online:predictions"]["drifted"], same

    shifted_at = datetime.now(UTC)
    send(served, scenes(150, (60, 170, 60), seed=3))  # a bloom: green
    settle(sessions, start + 450)
    moved = online_features(sessions, SPEC.name, version, shifted_at, None, THRESHOLDS)
    assert moved["online:predictions"]["drifted"], moved

    report = compute_drift({}, _window(60), THRESHOLDS, moved)
    assert report.verdict == "drift" and "online:predictions" in report.reason


def _window(n: int):
    import pandas as pd

    return pd.DataFrame({"id": range(n)})
