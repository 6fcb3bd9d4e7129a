"""A real uvicorn server on loopback serving the app ``oceanml serve`` runs, over a real
SQLite DB, lake and MLflow store holding simulated observations and registered versions."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import uvicorn

from core.registry import client, set_champion
from core.store import filesystem
from oceanml.serving.app import create_app, server_config
from oceanml.simulator import simulate, write_landing
from tasks.ingest import ingest
from tests.registered import SPEC, conv_net, register

END = datetime(2026, 11, 20, tzinfo=UTC)


@dataclass
class Server:
    url: str
    app: object
    server: uvicorn.Server

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kw)

    def delete(self, path: str, **kw) -> httpx.Response:
        return httpx.delete(self.url + path, timeout=30, **kw)


def start_server(settings, names: list[str]) -> Server:
    app = create_app(settings, names, client(settings), device="cpu")
    server = uvicorn.Server(server_config(app, settings, "127.0.0.1", 0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    served = Server(f"http://127.0.0.1:{port}", app, server)
    served.thread = thread
    return served


def stop_server(served: Server) -> None:
    served.server.should_exit = True
    served.thread.join(timeout=30)


def wait_ready(served: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while served.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, served.get("/health/ready").text
        time.sleep(0.1)


def serves_version(served: Server, body: dict, version: str, timeout: float) -> bool:
    """Whether the server answers ``body`` from ``version`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.post(f"/v1/models/{SPEC.name}/predict", json=body).json()["version"] == version:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def observations(settings, sessions) -> int:
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=3, per_day=10, end=END, annotated_fraction=0.5),
                  faults=False)
    return ingest(settings, sessions, now=END + timedelta(days=1)).ingested


TEMPERATURE = 0.4  # the champion's: sharper than its raw softmax, so a skipped scaling shows


def calibrated_net(seed: int):
    """``conv_net(seed)`` with a fitted temperature, as the train stage stores a classifier."""
    net = conv_net(seed)
    net.temperature.fill_(TEMPERATURE)
    return net


@pytest.fixture
def champion(settings) -> str:
    mlc = client(settings)
    version = register(mlc, settings, calibrated_net(1), "v1")
    set_champion(mlc, SPEC.name, version)
    return version


@pytest.fixture
def served(settings, monkeypatch, champion) -> Iterator[Server]:
    monkeypatch.setenv("OCEANML_SERVE_POLL_S", "0.5")
    monkeypatch.setenv("OCEANML_SERVE_LOG_INTERVAL_S", "0.2")
    monkeypatch.setenv("OCEANML_SERVE_MAX_WAIT_MS", "20")
    from core.settings import get_settings

    get_settings.cache_clear()
    server = start_server(get_settings(), [SPEC.name])
    wait_ready(server)
    yield server
    stop_server(server)
