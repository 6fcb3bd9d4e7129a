"""What a device does to upload its observations over HTTP (``POST /v1/observations``).

The contract: an upload is idempotent by content (the server answers a resend "already
received" and writes nothing), so a device keeps each observation until the server answered
202 or 200, and resends what may not have arrived: after a connection error or timeout, a 429
(after its ``Retry-After``) or a 5xx, with a bounded number of attempts and a growing pause.
A 4xx other than 429 is final: the reason says what to fix.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

ROUTE = "/v1/observations"


@dataclass
class Sent:
    """What happened to each observation a device sent."""

    accepted: int = 0
    already_received: int = 0
    refused: Counter = field(default_factory=Counter)  # reason -> count
    failed: int = 0  # never answered within the attempts: the device keeps and resends them
    retries: int = 0


def upload_parts(image: bytes, sidecar: dict[str, Any], name: str) -> list[tuple[str, Any]]:
    return [("image", (f"{name}.jpg", image, "image/jpeg")),
            ("sidecar", (None, json.dumps(sidecar)))]


def send_observations(url: str, key: str, observations: Iterable[Any], *, attempts: int = 5,
                      backoff_s: float = 0.5, timeout_s: float = 30.0,
                      progress: bool = False) -> Sent:
    """Send each observation (``image``, ``sidecar()``, ``stem``) to the server at ``url``."""
    sent = Sent()
    if progress:
        from tqdm import tqdm

        observations = tqdm(observations, desc="upload", unit="obs")
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                      headers={"Authorization": f"Bearer {key}"}) as http:
        for obs in observations:
            parts = upload_parts(obs.image, obs.sidecar(), obs.stem)
            outcome = send_one(http, parts, attempts, backoff_s, sent)
            if outcome == "accepted":
                sent.accepted += 1
            elif outcome == "already_received":
                sent.already_received += 1
            elif outcome is None:
                sent.failed += 1
            else:
                sent.refused[outcome] += 1
    return sent


def send_one(http: httpx.Client, parts: list, attempts: int, backoff_s: float,
             sent: Sent) -> str | None:
    """The server's verdict on one upload (its status, or the refusal's reason); None when
    no attempt got one."""
    for attempt in range(attempts):
        if attempt:
            sent.retries += 1
        pause = backoff_s * 2**attempt
        try:
            r = http.post(ROUTE, files=parts)
        except httpx.TransportError:  # refused, reset, timed out: it may not have arrived
            time.sleep(pause)
            continue
        if r.status_code in (200, 202):
            return r.json()["status"]
        if r.status_code == 429 or r.status_code >= 500:
            retry_after = r.headers.get("retry-after", "")
            time.sleep(float(retry_after) if retry_after.isdigit() else pause)
            continue
        return r.json().get("error", str(r.status_code))
    return None
