"""API keys on a real uvicorn server on loopback: scopes, revocation seen by a second replica,
rate limits, request ids, the secure default of ``oceanml serve``, hashes only in the DB."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from core.access import PREFIX, Scope, configured_key, key_id_of, verify
from core.db import Prediction
from core.keys import ApiKey, ApiKeyEvent, create_key, revoke_key
from oceanml.cli import app as cli
from tests.registered import SPEC
from tests.serving.conftest import Server, start_server, stop_server, wait_ready
from tests.serving.test_endpoint import jpeg

REFRESH_S = 0.3
PREDICT = f"/v1/models/{SPEC.name}/predict"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def secret_of(key: str) -> str:
    """What follows the key's public id (the url-safe secret may itself hold ``_``)."""
    return key.removeprefix(f"{PREFIX}{key_id_of(key)}_")


def body() -> dict:
    import base64

    return {"image": base64.b64encode(jpeg()).decode()}


def fresh_server(monkeypatch, **env: str) -> Server:
    monkeypatch.setenv("OCEANML_SERVE_KEYS_REFRESH_S", str(REFRESH_S))
    monkeypatch.setenv("OCEANML_SERVE_LOG_INTERVAL_S", "0.2")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from core.settings import get_settings

    get_settings.cache_clear()
    server = start_server(get_settings(), [SPEC.name])
    wait_ready(server)
    return server


@pytest.fixture
def locked(settings, sessions, monkeypatch, champion) -> Iterator[tuple[Server, dict[str, str]]]:
    keys = {name: create_key(sessions, name, scope, device_id=device)[0]
            for name, scope, device in (("app", Scope.predict, None),
                                        ("buoy", Scope.ingest, "buoy-7"),
                                        ("ops", Scope.admin, None))}
    server = fresh_server(monkeypatch)
    yield server, keys
    stop_server(server)


def refused_count(server: Server, key: str, key_header: dict, reason: str) -> float:
    text = server.get("/metrics", headers=key_header).text
    line = f'oceanml_requests_refused_total{{key="{key}",reason="{reason}"}}'
    return next((float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)), 0.0)


def test_each_route_asks_for_a_key_of_its_scope(locked) -> None:
    server, keys = locked
    none = server.post(PREDICT, json=body())
    assert none.status_code == 401 and none.json()["error"] == "unauthorized", none.text
    assert none.headers["www-authenticate"].startswith("Bearer")
    forged = keys["app"][:-4] + "AAAA"  # the right key id, the wrong secret
    for wrong in (forged, "ocn_0123456789ab_" + "A" * 43, "not-a-key"):
        r = server.post(PREDICT, json=body(), headers=bearer(wrong))
        assert r.status_code == 401, (wrong, r.text)
    r = server.post(PREDICT, json=body(), headers=bearer(keys["buoy"]))
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    assert server.post(PREDICT, json=body(), headers=bearer(keys["app"])).status_code == 200
    assert server.post(PREDICT, json=body(), headers={"X-API-Key": keys["app"]}).status_code == 200
    assert server.post(PREDICT, json=body(), headers=bearer(keys["ops"])).status_code == 200
    assert server.get("/v1/models").status_code == 401
    assert server.get("/v1/models", headers=bearer(keys["app"])).status_code == 200
    for probe in ("/health/live", "/health/ready"):
        assert server.get(probe).status_code == 200, probe
    assert server.get("/metrics").status_code == 401
    app = bearer(keys["app"])
    assert refused_count(server, "none", app, "unauthorized") == 3  # predict, models, metrics
    assert refused_count(server, "unknown", app, "unauthorized") == 3
    assert refused_count(server, "buoy", app, "forbidden") == 1


def test_guesses_at_a_keys_secret_are_rationed_and_its_holder_still_gets_in(locked) -> None:
    """Wrong secrets for a real key id each cost a scrypt check until the key has passed once:
    past GUESSES_PER_S they are refused with 429 before any check, so 16 at once cannot queue
    the holder behind them; the holder gets in after the Retry-After."""
    import secrets as random_secrets
    from concurrent.futures import ThreadPoolExecutor

    from oceanml.serving.auth import GUESSES_PER_S

    server, keys = locked
    with ThreadPoolExecutor(16) as pool:  # a holder starting 16 at once: one check, no 429
        first = list(pool.map(lambda _: server.post(PREDICT, json=body(),
                                                    headers=bearer(keys["ops"])), range(16)))
    assert [a.status_code for a in first] == [200] * 16, [a.text for a in first]
    key_id = keys["app"][:17]  # "ocn_<key id>_": the id is in every log line that names it
    guesses = [key_id + random_secrets.token_urlsafe(32) for _ in range(16)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda guess: server.post(PREDICT, json=body(), headers=bearer(guess)), guesses))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {401, 429}, statuses
    checked = statuses.count(401)  # the bucket's capacity, plus what refilled meanwhile
    assert 1 <= checked <= GUESSES_PER_S + 4 and statuses.count(429) >= 8, statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"] == "too_many_attempts" and int(refused.headers["retry-after"])
    deadline = time.monotonic() + 10
    while (held := server.post(PREDICT, json=body(), headers=bearer(keys["app"]))
           ).status_code == 429 and time.monotonic() < deadline:
        time.sleep(int(held.headers["retry-after"]))
    assert held.status_code == 200, held.text


def test_keys_are_managed_over_http_with_an_admin_key_and_audited(locked, sessions) -> None:
    server, keys = locked
    new = {"name": "partner", "scope": "predict", "rate": 3}
    refused = server.post("/v1/keys", json=new, headers=bearer(keys["app"]))
    assert refused.status_code == 403, refused.text
    made = server.post("/v1/keys", json=new, headers=bearer(keys["ops"]))
    assert made.status_code == 201, made.text
    partner = made.json()["key"]
    assert key_id_of(partner) == made.json()["key_id"] and "hash" not in made.json()
    again = server.post("/v1/keys", json=new, headers=bearer(keys["ops"]))
    assert again.status_code == 409, again.text
    bad = server.post("/v1/keys", json={"name": "cam", "scope": "ingest"},
                      headers=bearer(keys["ops"]))
    assert bad.status_code == 422 and "device" in bad.json()["detail"], bad.text
    listed = server.get("/v1/keys", headers=bearer(keys["ops"])).json()["keys"]
    assert [k["name"] for k in listed] == ["app", "buoy", "ops", "partner"]
    assert not any("hash" in k for k in listed)
    assert wait_for(lambda: server.post(PREDICT, json=body(),
                                        headers=bearer(partner)).status_code == 200)
    gone = server.delete("/v1/keys/partner", headers=bearer(keys["ops"]))
    assert gone.status_code == 200 and gone.json()["revoked_at"], gone.text
    assert server.delete("/v1/keys/nobody", headers=bearer(keys["ops"])).status_code == 404
    with sessions() as s:
        audit = [(e.action, e.name, e.actor) for e in s.scalars(select(ApiKeyEvent)
                                                               .order_by(ApiKeyEvent.id))]
    assert audit[-2:] == [("create", "partner", "key:ops"), ("revoke", "partner", "key:ops")]
    assert audit[0][2].startswith("os:")


def wait_for(condition, timeout: float = 10 * REFRESH_S + 5) -> float | None:
    """Seconds until ``condition()`` held, None if it did not within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def test_a_revoked_key_is_refused_by_every_replica_within_seconds(locked, sessions,
                                                                   monkeypatch) -> None:
    first, keys = locked
    second = fresh_server(monkeypatch)
    try:
        for replica in (first, second):
            assert replica.post(PREDICT, json=body(), headers=bearer(keys["app"])
                                ).status_code == 200
        revoke_key(sessions, "app")
        took = [wait_for(lambda r=replica: r.post(PREDICT, json=body(),
                                                  headers=bearer(keys["app"])
                                                  ).status_code == 401)
                for replica in (first, second)]
        assert all(t is not None and t < 3 * REFRESH_S + 2 for t in took), took
        assert second.post(PREDICT, json=body(), headers=bearer(keys["ops"])).status_code == 200
    finally:
        stop_server(second)


def test_past_its_rate_a_key_gets_429_with_retry_after_counted_by_name(
        settings, sessions, monkeypatch, champion) -> None:
    slow = create_key(sessions, "slow", Scope.predict, rate=2)[0]
    fast = create_key(sessions, "fast", Scope.predict, rate=1000)[0]
    server = fresh_server(monkeypatch)
    try:
        codes = [server.get("/v1/models", headers=bearer(slow)) for _ in range(8)]
        limited = [r for r in codes if r.status_code == 429]
        assert codes[0].status_code == 200 and len(limited) >= 4, [r.status_code for r in codes]
        assert all(int(r.headers["retry-after"]) >= 1 for r in limited)
        assert limited[0].json()["error"] == "rate_limited"
        assert all(server.get("/v1/models", headers=bearer(fast)).status_code == 200
                   for _ in range(8))  # one key's limit is not another's
        assert refused_count(server, "slow", bearer(fast), "rate_limited") == len(limited)
        time.sleep(1.0)
        assert server.get("/v1/models", headers=bearer(slow)).status_code == 200
    finally:
        stop_server(server)


def test_the_request_id_is_answered_logged_and_stored(locked, sessions, caplog) -> None:
    server, keys = locked
    with caplog.at_level(logging.INFO, logger="oceanml.serve.access"):
        given = server.post(PREDICT, json=body(), headers={**bearer(keys["app"]),
                                                           "X-Request-ID": "buoy-7:0042"})
        made = server.post(PREDICT, json=body(), headers={**bearer(keys["app"]),
                                                          "X-Request-ID": "no spaces\tplease"})
        assert given.headers["x-request-id"] == "buoy-7:0042"
        made_id = made.headers["x-request-id"]
        assert len(made_id) == 32 and "please" not in made_id

        def logged() -> dict:  # written once the response is out: it may follow the answer
            return {r.request_id: r for r in caplog.records if r.name == "oceanml.serve.access"}
        assert wait_for(lambda: {"buoy-7:0042", made_id} <= set(logged())), logged()
    logged = logged()
    assert logged["buoy-7:0042"].client == "app" and logged["buoy-7:0042"].status == 200
    assert "request_id=buoy-7:0042 key=app" in logged["buoy-7:0042"].getMessage()

    def stored() -> dict:
        with sessions() as s:
            return {p.request_id: p.client for p in s.scalars(select(Prediction))}
    assert wait_for(lambda: {"buoy-7:0042", made.headers["x-request-id"]} <= set(stored()))
    assert stored()["buoy-7:0042"] == "app"


def test_a_failure_inside_a_route_is_a_500_carrying_its_request_id(settings, champion,
                                                                     monkeypatch, caplog) -> None:
    """A bug on the answer path (made here by breaking it): the client gets a JSON 500 with the
    request id and none of the error's text, the log has the traceback under that id, and the
    server goes on answering."""
    from oceanml.serving import app as serving_app

    server = fresh_server(monkeypatch)
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("secret internals of a bug")

        monkeypatch.setattr(serving_app, "answer", broken)
        with caplog.at_level(logging.INFO):
            failed = server.post(PREDICT, json=body(), headers={"X-Request-ID": "trace-500"})
        assert failed.status_code == 500, failed.text
        assert failed.headers["x-request-id"] == "trace-500"
        assert failed.json()["error"] == "internal" and "trace-500" in failed.json()["detail"]
        assert "secret internals" not in failed.text
        logged = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-500"]
        assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in logged)
        assert any(r.name == "oceanml.serve.access" and r.status == 500 for r in logged)
        monkeypatch.undo()
        assert server.post(PREDICT, json=body()).status_code == 200
    finally:
        stop_server(server)


def test_only_hashes_are_stored(settings, sessions) -> None:
    key, row = create_key(sessions, "stored", Scope.predict)
    with sessions() as s:
        stored = s.scalar(select(ApiKey).where(ApiKey.name == "stored"))
        events = [json.dumps(e.detail) for e in s.scalars(select(ApiKeyEvent))]
    assert stored.hash.startswith("scrypt$") and verify(key, stored.hash)
    assert not verify(key[:-1] + ("A" if key[-1] != "A" else "B"), stored.hash)
    secret = secret_of(key)
    database = settings.db_url.removeprefix("sqlite:///")
    from pathlib import Path

    raw = b"".join(p.read_bytes() for p in Path(database).parent.glob(Path(database).name + "*"))
    assert raw and secret.encode() not in raw and key.encode() not in raw
    assert row.key_id.encode() in raw  # the public half is there: the test can see the file
    assert not any(secret in e for e in events)


def test_a_key_from_the_setting_opens_without_a_row(settings, sessions, monkeypatch,
                                                    champion) -> None:
    key, entry = configured_key(Scope.predict)
    server = fresh_server(monkeypatch, OCEANML_API_KEYS=json.dumps(
        {"from-secret": entry.model_dump(mode="json")}))
    try:
        assert server.post(PREDICT, json=body()).status_code == 401
        r = server.post(PREDICT, json=body(), headers=bearer(key))
        assert r.status_code == 200, r.text
        with sessions() as s:
            assert s.scalar(select(ApiKey.id)) is None
    finally:
        stop_server(server)


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_serve_binds_no_other_address_open_unless_told(settings, sessions, monkeypatch
                                                       ) -> None:
    from core.settings import get_settings

    # serve sends its logger to stderr, here CliRunner's: the original handlers come back after
    monkeypatch.setattr(logging.getLogger("oceanml.serve"), "handlers", [])
    get_settings.cache_clear()
    code, out = run_cli("serve", "--host", "0.0.0.0", "--port", "1")
    assert code == 2 and "no API key exists" in out and "--insecure" in out, out
    code, out = run_cli("serve", "--host", "0.0.0.0", "--port", "1", "--insecure")
    assert "no model has a champion yet" in out, out  # past the door, stopped further on
    assert "WARNING oceanml.serve: --insecure: serving 0.0.0.0 without authentication" in out
    create_key(sessions, "k", Scope.predict)
    code, out = run_cli("serve", "--host", "0.0.0.0", "--port", "1")
    assert "no model has a champion yet" in out and "no API key" not in out, out


def test_the_cli_shows_a_key_once_and_never_again(settings, sessions) -> None:
    code, out = run_cli("keys", "create", "cli-key", "--scope", "ingest", "--device", "d1",
                        "--rate", "4")
    assert code == 0, out
    key = next(line for line in out.splitlines() if line.startswith("ocn_"))
    code, listed = run_cli("keys", "list", "--json")
    rows = json.loads(listed)
    assert rows[0]["name"] == "cli-key" and rows[0]["device_id"] == "d1"
    assert rows[0]["rate"] == 4 and key not in listed and secret_of(key) not in listed
    code, out = run_cli("keys", "create", "cli-key", "--scope", "predict")
    assert code == 2 and "exists" in out
    code, out = run_cli("keys", "revoke", "cli-key")
    assert code == 0 and "revoked cli-key" in out
    code, out = run_cli("keys", "events")
    assert out.splitlines()[0].split()[2:4] == ["revoke", "cli-key"], out


def test_a_refusal_before_the_body_closes_the_connection(locked) -> None:
    """A keyless client announcing a large body (here to the admin route) is answered 401 at
    once and cut off: it cannot keep the connection by trickling the rest."""
    import socket

    server, _ = locked
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000000\r\n\r\n{")
        sock.settimeout(5)
        started, got = time.monotonic(), b""
        while chunk := sock.recv(65536):
            got += chunk
        took = time.monotonic() - started
    assert got.startswith(b"HTTP/1.1 401") and b"connection: close" in got.lower(), got[:300]
    assert took < 3, took


def test_emptying_the_key_table_opens_nothing(locked, sessions) -> None:
    from sqlalchemy import delete

    server, keys = locked
    with sessions.begin() as s:
        s.execute(delete(ApiKey))
    time.sleep(3 * REFRESH_S + 0.5)  # refreshed: no key is known any more
    assert server.post(PREDICT, json=body()).status_code == 401
    assert server.post(PREDICT, json=body(), headers=bearer(keys["app"])).status_code == 401
