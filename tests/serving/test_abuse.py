"""Clients that misbehave on purpose, against a real server on loopback: many large bodies at
once, slow headers, stalled and trickling bodies, huge JSON lists, deep JSON. Each gets a 4xx
or a 503, never a 500; memory stays within the stated bound; a normal request still answers."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.registered import SPEC
from tests.serving.conftest import Server, start_server, stop_server, wait_ready
from tests.serving.test_endpoint import jpeg

PREDICT = f"/v1/models/{SPEC.name}/predict"
READ_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.5
MIB = 2**20


@pytest.fixture
def strict(settings, monkeypatch, champion) -> Iterator[Server]:
    monkeypatch.setenv("OCEANML_SERVE_READ_TIMEOUT_S", str(READ_TIMEOUT_S))
    monkeypatch.setenv("OCEANML_SERVE_BODY_TIMEOUT_S", str(BODY_TIMEOUT_S))
    from core.settings import get_settings

    get_settings.cache_clear()
    server = start_server(get_settings(), [SPEC.name])
    wait_ready(server)
    yield server
    stop_server(server)


def host_port(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open past {limit_s} s: {got[:200]!r}")
    return got, time.monotonic() - started


def test_slow_headers_are_cut_off(strict) -> None:
    with socket.create_connection(host_port(strict)) as sock:
        sock.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\n")
        got, took = read_until_closed(sock, READ_TIMEOUT_S + 5)
    assert got == b"" and took < READ_TIMEOUT_S + 2, (got, took)
    with socket.create_connection(host_port(strict)) as sock:  # nothing at all
        got, took = read_until_closed(sock, READ_TIMEOUT_S + 5)
    assert took < READ_TIMEOUT_S + 2
    assert strict.get("/health/live").status_code == 200


def head(length: int | None) -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else \
        "Transfer-Encoding: chunked\r\n"
    return (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{size}\r\n").encode()


def test_a_stalled_body_gets_408(strict) -> None:
    with socket.create_connection(host_port(strict)) as sock:
        sock.sendall(head(1000) + b'{"image": "')
        got, took = read_until_closed(sock, READ_TIMEOUT_S + 5)
    assert got.startswith(b"HTTP/1.1 408") and b"request_timeout" in got, got[:300]
    assert took < READ_TIMEOUT_S + 2


def test_a_trickling_body_gets_408_at_the_body_deadline(strict) -> None:
    with socket.create_connection(host_port(strict)) as sock:
        sock.sendall(head(10_000))
        started = time.monotonic()
        sock.settimeout(0.01)
        got = b""
        while time.monotonic() - started < BODY_TIMEOUT_S + 5 and not got:
            try:
                sock.sendall(b" ")  # one byte every half idle timeout: never idle
            except OSError:
                break
            try:
                got = sock.recv(65536)
            except TimeoutError:
                time.sleep(READ_TIMEOUT_S / 2)
        took = time.monotonic() - started
    assert got.startswith(b"HTTP/1.1 408"), got[:300]
    assert BODY_TIMEOUT_S - 0.5 < took < BODY_TIMEOUT_S + 2, took


def test_huge_and_deep_json_get_a_4xx(strict) -> None:
    image = base64.b64encode(jpeg()).decode()
    tiny = strict.post(PREDICT, json={"images": ["QQ=="] * 200_000})
    assert (tiny.status_code, tiny.json()["error"]) == (413, "too_many_images"), tiny.text[:200]
    deep = strict.post(PREDICT, content=b'{"image": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
                       headers={"content-type": "application/json"})
    assert (deep.status_code, deep.json()["error"]) == (422, "bad_json"), deep.text[:200]
    fine = strict.post(PREDICT, json={"image": image})
    assert fine.status_code == 200, fine.text


BOUNDARY = "oceanml-abuse"
BODY_MB = 60
CLIENTS = 24
BUDGET_MIB = 128


def multipart_chunks(size_mb: int) -> Iterator[bytes]:
    """A multipart body with one 'image' part of ``size_mb`` MB, made as it is sent."""
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
           f"filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    block = os.urandom(MIB)
    for _ in range(size_mb):
        yield block
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def body_length(size_mb: int) -> int:
    return sum(len(c) for c in multipart_chunks(0)) + size_mb * MIB


def memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status)
            if k in ("VmRSS", "VmHWM")}


@pytest.fixture
def served_process(settings, champion, tmp_path) -> Iterator[tuple[str, int]]:
    """``oceanml serve`` as its own process, so its memory is its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OCEANML_SERVE_BODY_BUDGET_BYTES": str(BUDGET_MIB * MIB),
           "OCEANML_SERVE_BODY_WAIT_S": "0.5", "OCEANML_SERVE_POLL_S": "60"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "oceanml.cli", "serve", "--port", str(port),
                             "--models", SPEC.name], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "oceanml serve was not ready in 120 s"
            try:
                if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_many_large_bodies_at_once_stay_within_the_memory_bound(served_process) -> None:
    url, pid = served_process
    image = base64.b64encode(jpeg()).decode()
    assert httpx.post(url + PREDICT, json={"image": image}, timeout=30).status_code == 200
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from here
    before = memory_kib(pid)["VmRSS"]
    statuses: list[int] = []

    def upload(n: int) -> None:
        headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        if n % 2 == 0:  # half declare their size, half send it chunked
            headers["content-length"] = str(body_length(BODY_MB))
        try:
            r = httpx.post(url + PREDICT, content=multipart_chunks(BODY_MB), headers=headers,
                           timeout=120)
            statuses.append(r.status_code)
        except httpx.HTTPError:  # refused before the whole body was sent: the server hung up
            statuses.append(-1)

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    answered = httpx.post(url + PREDICT, json={"image": image}, timeout=60)
    for t in threads:
        t.join(timeout=300)
    peak = memory_kib(pid)["VmHWM"]
    assert answered.status_code in (200, 503), answered.text  # never a 500 under the load
    assert len(statuses) == CLIENTS and 500 not in statuses, statuses
    assert set(statuses) <= {413, 503, -1}, statuses  # each part is over the image limit
    assert 503 in statuses, statuses  # the budget turned some away
    bound_kib = (2 * BUDGET_MIB + 64) * 1024  # the budget, its parse, and slack
    assert peak - before < bound_kib, (peak - before) / 1024
    after = httpx.post(url + PREDICT, json={"image": image}, timeout=30)
    assert after.status_code == 200, after.text
