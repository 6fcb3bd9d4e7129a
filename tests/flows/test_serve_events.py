"""Where a Prefect API is configured, `oceanml serve` loads a new champion as soon as the
`oceanml.model.promoted` event arrives, long before its next registry poll."""

from __future__ import annotations

import base64
import time

from prefect.events import emit_event

from core.registry import client, set_champion
from tests.registered import SPEC, conv_net, register
from tests.serving.conftest import serves_version, start_server, stop_server, wait_ready
from tests.serving.test_endpoint import PREDICT, jpeg


def test_the_promoted_event_wakes_the_server_before_its_poll(settings, monkeypatch,
                                                           prefect_harness) -> None:
    from core.settings import get_settings

    mlc = client(settings)
    set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(1), "v1"))
    monkeypatch.setenv("OCEANML_SERVE_POLL_S", "600")  # the poll alone would take 10 minutes
    get_settings.cache_clear()
    server = start_server(get_settings(), [SPEC.name])
    body = {"image": base64.b64encode(jpeg()).decode()}
    try:
        wait_ready(server)
        assert server.post(PREDICT, json=body).json()["version"] == "1"
        time.sleep(3)  # the subscriber connects after start-up
        v2 = register(mlc, settings, conv_net(2), "v2")
        set_champion(mlc, SPEC.name, v2)
        emit_event(event="oceanml.model.promoted",
                   resource={"prefect.resource.id": f"oceanml.model.{SPEC.name}",
                             "prefect.resource.name": SPEC.name},
                   payload={"version": v2, "previous": "1", "reason": "test"})
        assert serves_version(server, body, v2, timeout=30)
    finally:
        stop_server(server)
