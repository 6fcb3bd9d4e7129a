"""Promotion under load: the server loads the new champion beside the old one and swaps;
no request fails, each answer comes from the version it names, and once the new version
answers, the old one never does again."""

from __future__ import annotations

import base64
import threading
import time

import httpx
import numpy as np
import torch

from core.registry import client, set_champion
from models.preprocess import model_input
from tests.registered import SPEC, conv_net, register
from tests.serving.conftest import calibrated_net, serves_version
from tests.serving.test_endpoint import PREDICT, jpeg

CLIENTS = 8
POLL_S = 0.5  # the served fixture's OCEANML_SERVE_POLL_S


def expected(net, image: bytes) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(model_input(image, 32)[None]), dim=1)[0].numpy()


def test_promotion_under_load_fails_nothing_and_swaps_once(settings, served) -> None:
    image = jpeg((48, 48))
    body = {"image": base64.b64encode(image).decode()}
    answers: list[tuple[float, float, int, str | None, list[float] | None]] = []
    lock, stop = threading.Lock(), threading.Event()

    def load() -> None:
        with httpx.Client(base_url=served.url, timeout=30) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = http.post(PREDICT, json=body)
                    status = r.status_code
                    doc = r.json() if status == 200 else {}
                except httpx.HTTPError:
                    status, doc = -1, {}
                probs = doc.get("predictions", [{}])[0].get("probabilities")
                with lock:
                    answers.append((started, time.monotonic(), status, doc.get("version"),
                                    [probs[c] for c in SPEC.outputs] if probs else None))

    threads = [threading.Thread(target=load) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    mlc = client(settings)
    v2 = register(mlc, settings, conv_net(2), "v2")
    promoted_at = time.monotonic()
    set_champion(mlc, SPEC.name, v2)
    deadline = promoted_at + 30
    while time.monotonic() < deadline:
        with lock:
            if any(a[3] == v2 and a[1] > promoted_at + 1.0 for a in answers):
                break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    statuses = {a[2] for a in answers}
    assert statuses == {200}, f"failed requests: {[a for a in answers if a[2] != 200][:5]}"
    assert len(answers) > 50
    first_v2 = min((a[1] for a in answers if a[3] == v2), default=None)
    assert first_v2 is not None, "the new champion never answered"
    assert first_v2 - promoted_at < 2 * POLL_S + 2.0  # two polls, plus loading the version
    late_v1 = [a for a in answers if a[0] > first_v2 and a[3] == "1"]
    assert not late_v1, f"{len(late_v1)} answers from v1 after v2 answered"
    # every answer is the named version's own answer for this image
    want = {"1": expected(calibrated_net(1), image), v2: expected(conv_net(2), image)}
    assert not np.allclose(want["1"], want[v2], atol=1e-3)
    for _, _, _, version, probs in answers:
        np.testing.assert_allclose(probs, want[version], atol=1e-4)


def test_the_endpoint_follows_a_rollback_like_a_promotion(settings, sessions, served) -> None:
    """v2 forced in, then rolled back: the served version follows the history both ways."""
    from tasks.champion import force_promote, rollback

    body = {"image": base64.b64encode(jpeg()).decode()}
    mlc = client(settings)
    v2 = register(mlc, settings, conv_net(2), "v2")
    force_promote(sessions, mlc, SPEC.name, v2, "hotfix", "cli:test")
    assert serves_version(served, body, v2, 2 * POLL_S + 10)
    rollback(sessions, mlc, SPEC.name, None, "hotfix misfires", "cli:test")
    assert serves_version(served, body, "1", 2 * POLL_S + 10)
