"""Releases on real uvicorn replicas over one SQLite DB and MLflow store: a canary answers its
share, the same on every replica, and an abort sends every request back to the champion
within a poll, failing none; a shadow returns only the champion's answers while both are
recorded in pairs; the CLI refuses what cannot be a release and records who ended it."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from core.db import Prediction
from core.registry import client
from core.releases import Release
from oceanml.cli import app
from tests.registered import SPEC, conv_net, register
from tests.serving.conftest import start_server, stop_server, wait_ready
from tests.serving.test_endpoint import PREDICT

POLL_S = 0.5  # the served fixture's OCEANML_SERVE_POLL_S
REQUESTS = 1000


def images(n: int, seed: int = 0) -> list[str]:
    """``n`` different small JPEGs, base64 (the assignment hashes the image)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def cli(*args: str) -> dict:
    result = CliRunner().invoke(app, ["models", "release", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def refused(*args: str) -> str:
    result = CliRunner().invoke(app, ["models", "release", *args])
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


@pytest.fixture
def candidate(settings, champion) -> str:
    return register(client(settings), settings, conv_net(2), "v2")


def wait_for_release(server, present: bool, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (server.get("/v1/models").json()["models"][0]["release"] is not None) != present:
        assert time.monotonic() < deadline, server.get("/v1/models").text
        time.sleep(0.05)


def answered_by(server, bodies: list[str], threads: int = 8) -> list[tuple[str, str]]:
    """(version, role) of each body's answer, in order, from ``threads`` clients at once."""
    out: list = [None] * len(bodies)

    def work(start: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(start, len(bodies), threads):
                r = http.post(PREDICT, json={"image": bodies[i]})
                assert r.status_code == 200, r.text
                out[i] = (r.json()["version"], r.json()["role"])

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert all(o is not None for o in out)
    return out


def test_a_canary_takes_its_share_on_every_replica_and_an_abort_returns_it(
        settings, sessions, served, candidate) -> None:
    from core.settings import get_settings

    second = start_server(get_settings(), [SPEC.name])  # the served fixture's poll and log
    try:
        wait_ready(second)
        started = cli("start", SPEC.name, candidate, "--canary", "0.2", "--for", "1h")
        assert started["mode"] == "canary" and started["champion_version"] == "1"
        for server in (served, second):
            wait_for_release(server, True)
        bodies = images(REQUESTS)
        first = answered_by(served, bodies)
        by_candidate = sum(version == candidate for version, _ in first)
        assert 0.16 <= by_candidate / REQUESTS <= 0.24, by_candidate
        assert {(v, r) for v, r in first} == {("1", "champion"), (candidate, "canary")}
        # sticky: the same image gets the same version from the other replica
        assert answered_by(second, bodies[:300]) == first[:300]
        counted = answers_counted(served)
        assert counted[(candidate, "canary", "ok")] == by_candidate
        assert counted[("1", "champion", "ok")] == REQUESTS - by_candidate

        # abort under load: within a poll every request is the champion's, none fails
        results: list[tuple[float, int, str | None]] = []
        stop = threading.Event()

        def load(offset: int) -> None:
            with httpx.Client(base_url=second.url, timeout=30) as http:
                n = offset
                while not stop.is_set():
                    sent = time.monotonic()
                    r = http.post(PREDICT, json={"image": bodies[n % REQUESTS]})
                    results.append((sent, r.status_code, r.json().get("version")))
                    n += 4
        loaders = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for t in loaders:
            t.start()
        time.sleep(1.0)
        aborted_at = time.monotonic()
        ended = cli("abort", SPEC.name, "--reason", "test abort")
        done_at = time.monotonic()  # the release is closed in the DB
        time.sleep(2 * POLL_S + 1.0)
        stop.set()
        for t in loaders:
            t.join(timeout=60)
        assert ended["state"] == "aborted" and ended["forced"] and ended["reason"] == "test abort"
        assert {status for _, status, _ in results} == {200}
        assert any(v == candidate for sent, _, v in results if sent < aborted_at)
        late = [(round(sent - done_at, 3), v) for sent, _, v in results
                if sent > done_at + POLL_S + 0.2]
        assert late and {v for _, v in late} == {"1"}, late
    finally:
        stop_server(second)

    time.sleep(0.5)  # the prediction log's interval
    with sessions() as s:
        roles = dict(s.execute(select(Prediction.role, Prediction.model_version)
                               .where(Prediction.role.is_not(None))).all())
        release = s.scalar(select(Release))
    assert roles == {"champion": "1", "canary": candidate}
    assert release.state == "aborted" and release.decided_by.startswith("cli:")
    status = cli("status", SPEC.name)
    canary = next(v for v in status["served"]["versions"] if v["role"] == "canary")
    assert canary["version"] == candidate and canary["requests"] >= 0.16 * REQUESTS
    assert canary["errors"] == 0 and canary["p99_ms"] > 0


def answers_counted(server) -> dict[tuple[str, str, str], float]:
    """``oceanml_answers_total`` of ``server``'s /metrics by (version, role, outcome)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "oceanml_answers_total":
                labels = sample.labels
                out[(labels["version"], labels["role"], labels["outcome"])] = sample.value
    return out


def test_a_shadow_returns_the_champion_and_records_both_in_pairs(
        settings, sessions, served, candidate) -> None:
    cli("start", SPEC.name, candidate, "--shadow", "--for", "1h")
    wait_for_release(served, True)
    bodies = images(100, seed=1)
    assert set(answered_by(served, bodies, threads=1)) == {("1", "champion")}
    deadline = time.monotonic() + 10
    while True:
        with sessions() as s:
            rows = s.execute(select(Prediction.request_id, Prediction.role,
                                    Prediction.model_version, Prediction.content_hash)
                             .where(Prediction.role.is_not(None))).all()
        if sum(r.role == "shadow" for r in rows) == 100 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    by_request: dict[str, dict[str, tuple[str, str]]] = {}
    for request_id, role, version, content_hash in rows:
        by_request.setdefault(request_id, {})[role] = (version, content_hash)
    assert len(by_request) == 100
    for pair in by_request.values():
        assert pair.keys() == {"champion", "shadow"}
        assert pair["champion"][0] == "1" and pair["shadow"][0] == candidate
        assert pair["champion"][1] == pair["shadow"][1]  # the same image
    served_figures = cli("status", SPEC.name)["served"]
    assert served_figures["pairs"] == 100 and 0 <= served_figures["agreement"] <= 1


def test_the_cli_refuses_what_cannot_be_a_release_and_a_promotion_is_recorded(
        settings, sessions, champion, candidate) -> None:
    assert "exactly one of --canary" in refused("start", SPEC.name, candidate, "--for", "1h")
    assert "champion already" in refused("start", SPEC.name, champion, "--canary", "0.1",
                                         "--for", "1h")
    assert "share must be in" in refused("start", SPEC.name, candidate, "--canary", "1.5",
                                         "--for", "1h")
    assert "not a duration" in refused("start", SPEC.name, candidate, "--canary", "0.1",
                                       "--for", "soon")
    assert "no open release" in refused("abort", SPEC.name)
    cli("start", SPEC.name, candidate, "--canary", "0.1", "--for", "1h")
    assert "open release already" in refused("start", SPEC.name, candidate, "--shadow",
                                             "--for", "1h")
    promoted = cli("promote", SPEC.name, "--reason", "looks good")
    assert promoted["state"] == "promoted" and promoted["forced"]
    assert "no open release" in refused("promote", SPEC.name)
    history = json.loads(CliRunner().invoke(app, ["models", "history", SPEC.name, "--json"])
                         .output)
    assert history[-1]["version"] == candidate and history[-1]["forced"]
    assert f"release {promoted['id']}" in history[-1]["reason"]
    assert client(settings).get_model_version_by_alias(SPEC.name, "champion").version == \
        int(candidate)
