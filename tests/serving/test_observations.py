"""Devices upload over HTTP (``POST /v1/observations``) to a real server on loopback: the
key's device, the ingestion checks, idempotent resends, and the next ingest taking each
accepted upload exactly once."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core.access import Scope
from core.db import Observation
from core.keys import create_key
from core.store import filesystem
from oceanml.simulator import SimulatedObservation, simulate
from tasks.ingest import ingest
from tests.serving.conftest import Server, start_server, stop_server, wait_ready

END = datetime(2026, 11, 20, tzinfo=UTC)
ROUTE = "/v1/observations"


@pytest.fixture
def observed() -> list[SimulatedObservation]:
    return list(simulate(days=1, devices=2, per_day=6, end=END, seed=4))


@pytest.fixture
def uploads(settings, sessions, monkeypatch, observed) -> Iterator[tuple[Server, dict]]:
    """A server taking uploads and serving no model, and keys: one ingest key per device,
    a predict key."""
    monkeypatch.setenv("OCEANML_SERVE_OBSERVATIONS", "true")
    monkeypatch.setenv("OCEANML_SERVE_KEYS_REFRESH_S", "0.3")
    from core.settings import get_settings

    get_settings.cache_clear()
    devices = sorted({o.device.device_id for o in observed})
    keys = {d: create_key(sessions, f"dev-{d}", Scope.ingest, device_id=d)[0] for d in devices}
    keys["app"] = create_key(sessions, "app", Scope.predict)[0]
    server = start_server(get_settings(), [])
    wait_ready(server)
    yield server, keys
    stop_server(server)


def parts(*observations: SimulatedObservation, sidecar: dict | None = None) -> list:
    out = []
    for o in observations:
        out.append(("image", (f"{o.stem}.jpg", o.image, "image/jpeg")))
        out.append(("sidecar", (None, json.dumps(sidecar or o.sidecar()))))
    return out


def send(server: Server, key: str | None, files: list):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return server.post(ROUTE, files=files, headers=headers)


def landing_files(settings) -> list[str]:
    landing = filesystem(settings.landing_url)
    if not landing.fs.exists(landing.root):
        return []
    return sorted(landing.relative(p) for p in landing.fs.find(landing.root))


def test_a_device_uploads_once_and_the_next_ingest_takes_it_once(settings, sessions, uploads,
                                                                  observed) -> None:
    server, keys = uploads
    first = observed[0]
    key = keys[first.device.device_id]
    accepted = send(server, key, parts(first))
    assert accepted.status_code == 202, accepted.text
    content_hash = accepted.json()["content_hash"]
    day = f"{first.observed_at:%Y-%m-%d}/{first.device.device_id}/{content_hash}"
    assert landing_files(settings) == [f"{day}.jpg", f"{day}.json"]
    again = send(server, key, parts(first))
    assert again.status_code == 200 and again.json()["status"] == "already_received"
    assert again.json()["content_hash"] == content_hash
    assert len(landing_files(settings)) == 2

    mine = [o for o in observed if o.device.device_id == first.device.device_id][1:4]
    batch = send(server, key, parts(*mine))
    assert batch.status_code == 202, batch.text
    hashes = {content_hash} | {o["content_hash"] for o in batch.json()["observations"]}
    assert len(hashes) == 4

    result = ingest(settings, sessions, now=END + timedelta(days=1))
    assert result.ingested == 4 and not result.rejected, result
    with sessions() as s:
        stored = set(s.scalars(select(Observation.content_hash)))
    assert stored == hashes  # the hash the device was told is the observation's identity
    assert ingest(settings, sessions, now=END + timedelta(days=1)).ingested == 0
    after = send(server, key, parts(first))  # still known once ingested
    assert after.status_code == 200 and after.json()["status"] == "already_received"


def test_only_the_keys_device_may_upload_its_observations(settings, uploads, observed) -> None:
    server, keys = uploads
    first = observed[0]
    other = next(o for o in observed if o.device.device_id != first.device.device_id)
    wrong = send(server, keys[first.device.device_id], parts(first, other))
    assert wrong.status_code == 403 and wrong.json()["error"] == "wrong_device", wrong.text
    assert landing_files(settings) == []  # nothing of the request was written
    assert send(server, None, parts(first)).status_code == 401
    assert send(server, keys["app"], parts(first)).status_code == 403


def test_refused_uploads_get_the_ingestion_reason_and_write_nothing(settings, uploads,
                                                                     observed) -> None:
    server, keys = uploads
    first = observed[0]
    key = keys[first.device.device_id]
    truncated = [("image", ("x.jpg", first.image[: len(first.image) // 2], "image/jpeg")),
                 ("sidecar", (None, json.dumps(first.sidecar())))]
    r = send(server, key, truncated)
    assert (r.status_code, r.json()["error"]) == (422, "image_truncated"), r.text
    hot = {**first.sidecar(), "readings": {**first.sidecar()["readings"], "ph": 42}}
    r = send(server, key, parts(first, sidecar=hot))
    assert r.status_code == 422 and r.json()["error"] == "out_of_range", r.text
    r = send(server, key, [("image", ("x.jpg", first.image, "image/jpeg"))])
    assert (r.status_code, r.json()["error"]) == (422, "missing_sidecar"), r.text
    r = send(server, key, [("image", ("x.jpg", first.image, "image/jpeg")),
                           ("sidecar", (None, "{not json"))])
    assert r.status_code == 422, r.text
    assert landing_files(settings) == []
    mixed = send(server, key, [*parts(first), *truncated])
    assert mixed.status_code == 202, mixed.text
    assert [o["status"] for o in mixed.json()["observations"]] == ["accepted", "refused"]
    assert len(landing_files(settings)) == 2


def test_the_simulator_sends_through_the_api_and_resends_what_was_refused_for_now(
        settings, sessions, uploads) -> None:
    from typer.testing import CliRunner

    from oceanml.cli import app as cli

    server, _ = uploads
    device = next(iter(simulate(days=1, devices=1, per_day=1, end=END, seed=9))).device
    # one upload a second: the second and third are refused with 429 and sent again
    slow = create_key(sessions, "slow-buoy", Scope.ingest, device_id=device.device_id,
                      rate=1)[0]
    time.sleep(1.0)  # the server reads the new key
    args = ["simulate", "--to", server.url, "--key", slow, "--days", "1", "--devices", "1",
            "--per-day", "3", "--seed", "9", "--end", f"{END:%Y-%m-%d}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "3 accepted, 0 already received, refused none, 0 unanswered" in result.output
    retries = int(result.output.split("(")[-1].split()[0])
    assert retries >= 1, result.output  # the rate limit was met, and waited out
    again = CliRunner().invoke(cli, args)
    assert "0 accepted, 3 already received" in again.output, again.output
    assert len(landing_files(settings)) == 6


def test_a_device_that_cannot_reach_the_server_gives_up_after_its_attempts(settings) -> None:
    from typer.testing import CliRunner

    from oceanml.cli import app as cli

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["simulate", "--to", f"http://127.0.0.1:{port}", "--key",
                                      "ocn_x", "--days", "1", "--devices", "1", "--per-day",
                                      "2", "--attempts", "2"])
    assert result.exit_code == 1, result.output
    assert "0 accepted" in result.output and "2 unanswered after 2 tries" in result.output
    assert time.monotonic() - started < 20
