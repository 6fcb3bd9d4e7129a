"""An S3 endpoint that accepts connections and never answers (a wedged proxy, a black-holed
load balancer) fails the ingest in a bounded time, naming the endpoint, instead of holding the
task for ever; nothing is written."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from core.db import Observation
from core.settings import get_settings
from tasks.ingest import ingest


@pytest.fixture
def silent_endpoint() -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server on loopback that accepts every connection and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    server.close()
    for conn in accepted:
        conn.close()


def test_an_s3_endpoint_that_never_answers_fails_the_ingest_within_its_bound(
        settings, sessions, silent_endpoint, monkeypatch) -> None:
    url, accepted = silent_endpoint
    monkeypatch.setenv("OCEANML_S3_ENDPOINT_URL", url)
    monkeypatch.setenv("OCEANML_LANDING_URL", "s3://landing/incoming")
    monkeypatch.setenv("OCEANML_S3_TIMEOUT_S", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    get_settings.cache_clear()
    start = time.monotonic()
    with pytest.raises(Exception, match=f"Read timeout on endpoint URL: \"{url}/landing"):
        ingest(get_settings(), sessions)
    assert time.monotonic() - start < 30  # about 8 reads of 1 s each, then it gives up
    assert accepted  # it did connect: the read, not the connection, is what never ended
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Observation)) == 0
