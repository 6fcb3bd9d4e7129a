"""Who may call a route, and how often: API keys checked on every request, per-key rate limits.

A replica reads the keys (the ``api_keys`` table and the ``OCEANML_API_KEYS`` setting) at
start and every ``OCEANML_SERVE_KEYS_REFRESH_S`` seconds, so a revoked key is refused by every
replica within that time, without a restart. A key is checked against its scrypt hash once
(about 50 ms, in a worker thread, one check per key at a time); what passed is remembered as
its SHA-256 digest in memory only. A wrong secret for a real key id costs a scrypt check too,
so those are rationed per key id (:data:`GUESSES_PER_S`; past it, 429): guessing cannot hold
a core, nor queue the key's holder behind a minute of checks. Until a key has ever existed
(revoked ones count), the server is open, which ``oceanml serve`` allows on loopback only (or
with ``--insecure``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool

from core.access import ConfiguredKey, Grant, Scope, key_id_of, verify
from core.keys import grants, mark_used
from oceanml.serving.inputs import BadInput

log = logging.getLogger("oceanml.serve")
GUESSES_PER_S = 4.0  # scrypt checks a second per key id of secrets not known to pass


@dataclass
class TokenBucket:
    """``rate`` requests a second, up to a second's worth at once."""

    rate: float
    tokens: float = field(init=False)
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate)

    def take(self, now: float) -> float:
        """0 when a request may go now (and it is counted), else the seconds until one may."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class KeyRing:
    """The keys one replica knows, the keys that passed, their buckets and last uses."""

    def __init__(self, sessions: sessionmaker | None, configured: dict[str, ConfiguredKey], *,
                 refresh_s: float, default_rate: float,
                 on_refused: Any = None) -> None:
        self.sessions = sessions
        self.configured = configured
        self.refresh_s = refresh_s
        self.default_rate = default_rate
        self.on_refused = on_refused or (lambda key, reason: None)
        self.grants: dict[str, Grant] = {}
        self.loaded = False
        self.seen_keys = False
        self.passed: dict[str, bytes] = {}  # key id -> SHA-256 of the key that passed scrypt
        self.checking: dict[str, asyncio.Lock] = {}
        self.guesses: dict[str, TokenBucket] = {}  # per key id: scrypt checks not yet passed
        self.buckets: dict[str, TokenBucket] = {}
        self.used: dict[str, datetime] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enforced(self) -> bool:
        """Keys are required once a key was ever seen (a table emptied later, or restored
        from an older backup, opens nothing); not loaded yet counts as yes."""
        return self.seen_keys or not self.loaded

    def refresh(self) -> None:
        """Read the keys again; forget what passed for a key revoked or replaced. A failed
        read keeps the keys known so far (a DB outage opens nothing)."""
        try:
            fresh = grants(self.sessions, self.configured)
        except Exception as exc:  # noqa: BLE001 - the DB is down: keep what we know
            log.warning("could not read the API keys (%s); keeping the %d known",
                        type(exc).__name__, len(self.grants))
            return
        for key_id, old in list(self.grants.items()):
            new = fresh.get(key_id)
            if new is None or new.revoked or new.hash != old.hash:
                self.passed.pop(key_id, None)
        self.grants, self.loaded = fresh, True
        self.seen_keys = self.seen_keys or bool(fresh)
        self._flush_used()

    def _flush_used(self) -> None:
        used, self.used = self.used, {}
        if used and self.sessions is not None:
            try:
                mark_used(self.sessions, used)
            except Exception:  # noqa: BLE001 - last use is best effort
                self.used = {**used, **self.used}

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="oceanml-keys", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._flush_used()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    async def admit(self, token: str | None, needed: Scope) -> Grant | None:
        """The grant of ``token`` if it may use a route of ``needed`` now, else the 401, 403
        or 429 that says why; None when no key is required."""
        if not self.enforced:
            return None
        if not token:
            raise self._refused("none", 401, "unauthorized",
                                "this route needs an API key: Authorization: Bearer <key>")
        key_id = key_id_of(token)
        grant = self.grants.get(key_id) if key_id else None
        if grant is None or grant.revoked or not await self._passes(token, grant):
            raise self._refused("unknown", 401, "unauthorized", "unknown or revoked API key")
        if not grant.allows(needed):
            raise self._refused(grant.name, 403, "forbidden",
                                f"key {grant.name!r} has scope {grant.scope.value}; this route "
                                f"needs {needed.value}")
        bucket = self.buckets.get(grant.key_id)
        rate = grant.rate or self.default_rate
        if bucket is None or bucket.rate != rate:
            bucket = self.buckets[grant.key_id] = TokenBucket(rate)
        wait = bucket.take(time.monotonic())
        if wait:
            retry = str(max(1, math.ceil(wait)))
            raise self._refused(grant.name, 429, "rate_limited",
                                f"key {grant.name!r} is limited to {rate:g} requests/s",
                                {"Retry-After": retry})
        self.used[grant.key_id] = datetime.now(UTC)
        return grant

    async def _passes(self, token: str, grant: Grant) -> bool:
        digest = hashlib.sha256(token.encode()).digest()
        known = self.passed.get(grant.key_id)
        if known is not None:
            return hmac.compare_digest(known, digest)
        lock = self.checking.setdefault(grant.key_id, asyncio.Lock())
        async with lock:  # one scrypt per key at a time: the others wait for its verdict
            known = self.passed.get(grant.key_id)
            if known is not None:  # the holder's requests that waited on its first check
                return hmac.compare_digest(known, digest)
            guesses = self.guesses.setdefault(grant.key_id, TokenBucket(GUESSES_PER_S))
            wait = guesses.take(time.monotonic())
            if wait:
                raise self._refused(grant.name, 429, "too_many_attempts",
                                    f"too many unverified attempts at key {grant.name!r}",
                                    {"Retry-After": str(max(1, math.ceil(wait)))})
            if await run_in_threadpool(verify, token, grant.hash):
                self.passed[grant.key_id] = digest
                return True
        return False

    def _refused(self, key: str, status: int, reason: str, detail: str,
                 headers: dict[str, str] | None = None) -> BadInput:
        self.on_refused(key, reason)
        if status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="oceanml"', **(headers or {})}
        return BadInput(status, reason, detail, headers)


def presented_key(headers: Any) -> str | None:
    """The key of a request: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    auth = headers.get("authorization")
    if auth:
        kind, _, value = auth.partition(" ")
        return value.strip() if kind.lower() == "bearer" else None
    return headers.get("x-api-key")
