"""The online endpoint over real HTTP: answers equal batch scoring's, every bad input gets
its 4xx, the metrics and health endpoints say what they should, answers reach the DB."""

from __future__ import annotations

import base64
import hashlib
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from core.db import Observation, Prediction
from core.registry import client
from core.store import filesystem
from tasks.score import score_model
from tests.registered import SPEC
from tests.serving.conftest import TEMPERATURE, calibrated_net

PREDICT = f"/v1/models/{SPEC.name}/predict"


def lake_images(settings, sessions, n: int) -> list[tuple[int, bytes]]:
    lake = filesystem(settings.lake_url)
    with sessions() as s:
        rows = s.execute(select(Observation.id, Observation.image_key)
                         .where(Observation.image_key.is_not(None))
                         .order_by(Observation.id).limit(n)).all()
    return [(i, lake.fs.cat_file(lake.path(key))) for i, key in rows]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jpeg(size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 80, 120)).save(buf, "JPEG")
    return buf.getvalue()


def version_probabilities(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The champion's softmax for an image at temperature 1 and at its own temperature,
    computed here from the same network."""
    import torch

    from models.preprocess import model_input

    with torch.no_grad():
        logits = calibrated_net(1).raw(model_input(data, 32)[None])
    return (torch.softmax(logits, dim=1)[0].numpy(),
            torch.softmax(logits / TEMPERATURE, dim=1)[0].numpy())


def test_the_served_answer_is_the_batch_answer(settings, sessions, observations, served) -> None:
    score_model(sessions, client(settings), settings, SPEC.name)
    with sessions() as s:
        stored = dict(s.execute(select(Prediction.observation_id, Prediction.probabilities)
                                .where(Prediction.source == "batch")).all())
    images = lake_images(settings, sessions, 6)
    for obs, data in images:
        response = served.post(PREDICT, files={"image": ("x.jpg", data, "image/jpeg")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == "1" and body["model"] == SPEC.name
        answer = body["predictions"][0]
        got = np.array([answer["probabilities"][c] for c in SPEC.outputs])
        want = np.array([stored[obs][c] for c in SPEC.outputs])
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert answer["label"] == max(stored[obs], key=stored[obs].get)
        raw, calibrated = version_probabilities(data)
        np.testing.assert_allclose(got, calibrated, atol=1e-4)  # the version's temperature
        assert np.abs(raw - calibrated).max() > 1e-3  # which made a difference
    # several images in one JSON request: the same answers, in order
    batch = served.post(PREDICT, json={"images": [b64(d) for _, d in images]}).json()
    assert len(batch["predictions"]) == len(images)
    for (obs, _), answer in zip(images, batch["predictions"], strict=True):
        got = np.array([answer["probabilities"][c] for c in SPEC.outputs])
        np.testing.assert_allclose(got, [stored[obs][c] for c in SPEC.outputs], atol=1e-4)


def test_online_answers_are_recorded_off_the_request_path(settings, sessions, observations,
                                                          served) -> None:
    images = lake_images(settings, sessions, 3)
    for _, data in images:
        assert served.post(PREDICT, json={"image": b64(data)}).status_code == 200
    rows = online_rows(sessions, 3)
    assert len(rows) == 3
    assert {r.content_hash for r in rows} == {hashlib.sha256(d).hexdigest() for _, d in images}
    assert all(r.observation_id is None and r.model_version == "1" for r in rows)


def online_rows(sessions, expected: int, timeout: float = 10) -> list[Prediction]:
    """The online predictions, once ``expected`` of them were written (the log is a thread)
    or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as s:
            rows = s.scalars(select(Prediction).where(Prediction.source == "online")).all()
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def bomb() -> bytes:
    """A small PNG whose header claims more pixels than the ingestion limit allows."""
    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, "PNG")
    return buf.getvalue()


BAD_INPUTS = [
    ("not an image", {"files": {"image": ("x.jpg", b"hello, not an image", "image/jpeg")}},
     422, "image_undecodable"),
    ("truncated jpeg", {"files": {"image": ("x.jpg", jpeg((200, 200))[:400], "image/jpeg")}},
     422, "image_truncated"),
    ("decompression bomb", {"files": {"image": ("x.png", bomb(), "image/png")}},
     413, "decompression_bomb"),
    ("bad base64", {"json": {"image": "%%% not base64 %%%"}}, 422, "bad_base64"),
    ("body not JSON", {"content": b"{oops", "headers": {"content-type": "application/json"}},
     422, "bad_json"),
    ("images not a list", {"json": {"images": "abc"}}, 422, "bad_json"),
    ("no image", {"json": {"readings": {"ph": 8.0}}}, 422, "no_image"),
    ("wrong content type", {"content": b"abc", "headers": {"content-type": "text/plain"}},
     415, "unsupported_media_type"),
    ("readings out of range", {"json": {"image": b64(jpeg()), "readings": {"ph": 42}}},
     422, "bad_readings"),
    ("readings not JSON", {"files": {"image": ("x.jpg", jpeg(), "image/jpeg")},
                           "data": {"readings": "{nope"}}, 422, "bad_readings"),
    ("too many images", {"json": {"images": [b64(jpeg())] * 17}}, 413, "too_many_images"),
    ("too many image parts", {"files": [("image", ("x.jpg", jpeg(), "image/jpeg"))] * 40},
     413, "too_many_images"),
]


@pytest.mark.parametrize(("case", "request_kw", "status", "reason"), BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_its_4xx_with_a_clear_json_error(served, case, request_kw, status,
                                                        reason) -> None:
    response = served.post(PREDICT, **request_kw)
    assert response.status_code == status, response.text
    assert response.json()["error"] == reason and response.json()["detail"]
    assert served.get("/health/live").status_code == 200  # and the server is still there


def test_limits_are_the_ingestion_limits(settings, monkeypatch, champion) -> None:
    from core.settings import get_settings
    from tests.serving.conftest import start_server, stop_server, wait_ready

    monkeypatch.setenv("OCEANML_MAX_IMAGE_BYTES", "2000")
    get_settings.cache_clear()
    server = start_server(get_settings(), [SPEC.name])
    try:
        wait_ready(server)
        big = jpeg((300, 300))
        assert len(big) > 2000
        response = server.post(PREDICT, files={"image": ("x.jpg", big, "image/jpeg")})
        assert (response.status_code, response.json()["error"]) == (413, "image_too_large")
        huge = server.post(PREDICT, content=b"x" * 200_000,
                           headers={"content-type": "application/json"})
        assert (huge.status_code, huge.json()["error"]) == (413, "body_too_large")
        assert server.post(PREDICT, json={"image": b64(jpeg())}).status_code == 200
    finally:
        stop_server(server)


def test_an_unknown_model_is_a_404(served) -> None:
    response = served.post("/v1/models/kraken-detector/predict", json={"image": b64(jpeg())})
    assert response.status_code == 404 and response.json()["error"] == "unknown_model"
    assert SPEC.name in response.json()["detail"]


def test_models_health_and_metrics(served) -> None:
    models = served.get("/v1/models").json()["models"]
    assert [(m["name"], m["champion_version"], m["input_size"]) for m in models] == [
        (SPEC.name, "1", 32)]
    assert served.get("/health/ready").json() == {"status": "ready"}
    with ThreadPoolExecutor(8) as pool:  # arriving together: batched on the server
        codes = list(pool.map(lambda _: served.post(PREDICT, json={"image": b64(jpeg())})
                              .status_code, range(32)))
    assert codes == [200] * 32
    served.post(PREDICT, json={"image": "%%"})
    text = served.get("/metrics").text
    assert f'oceanml_requests_total{{model="{SPEC.name}",status="200"}} 32.0' in text
    assert f'oceanml_requests_total{{model="{SPEC.name}",status="422"}} 1.0' in text
    assert f'oceanml_request_latency_seconds_bucket{{le="+Inf",model="{SPEC.name}",status="200"}} 32.0' in text
    assert f'oceanml_model_version{{model="{SPEC.name}"}} 1.0' in text
    count = _sample(text, f'oceanml_batch_size_count{{model="{SPEC.name}"}}')
    total = _sample(text, f'oceanml_batch_size_sum{{model="{SPEC.name}"}}')
    assert total == 32 and count < 32  # some forward passes served several requests


def _sample(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def test_not_ready_until_a_champion_exists_then_it_follows(settings, monkeypatch) -> None:
    from core.registry import set_champion
    from core.settings import get_settings
    from tests.registered import conv_net, register
    from tests.serving.conftest import start_server, stop_server, wait_ready

    monkeypatch.setenv("OCEANML_SERVE_POLL_S", "0.3")
    get_settings.cache_clear()
    server = start_server(get_settings(), [SPEC.name])
    try:
        time.sleep(1.0)
        ready = server.get("/health/ready")
        assert ready.status_code == 503 and SPEC.name in ready.json()["missing"]
        early = server.post(PREDICT, json={"image": b64(jpeg())})
        assert early.status_code == 503 and early.json()["error"] == "not_loaded"
        mlc = client(settings)
        set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(3), "v1"))
        wait_ready(server, timeout=30)
        assert server.post(PREDICT, json={"image": b64(jpeg())}).json()["version"] == "1"
    finally:
        stop_server(server)


def test_online_rows_count_in_the_table(settings, sessions, served) -> None:
    assert served.post(PREDICT, json={"images": [b64(jpeg())] * 4}).status_code == 200
    assert len(online_rows(sessions, 4)) == 4  # identical images: a row per answer, no clash
