"""API keys: who may call the endpoint and the device API, with which scope, how often.

A key is ``ocn_<key id>_<secret>``, shown once when it is made. What is stored (the
``api_keys`` table, or the ``OCEANML_API_KEYS`` setting for a deployment that writes no row)
is its public key id and an scrypt hash of the whole key, never the key. Every creation and
revocation is an ``api_key_events`` row: what, when, by whom (the OS user, or the admin key
that asked). A revoked key stays in the table, so a server that ever had keys never opens
again by revoking them all.
"""

from __future__ import annotations

import getpass
import re
from datetime import datetime
from typing import Any

from sqlalchemy import Double, Integer, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from core.access import ConfiguredKey, Grant, Scope, hash_key, new_key
from core.db import NULLABLE_JSON, Base, utcnow

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ApiKey(Base):
    """A key's public half: its id, its scrypt hash, what it may do and how often."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[str] = mapped_column(String(16), unique=True)
    hash: Mapped[str] = mapped_column(String(160))
    scope: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[str | None] = mapped_column(String(64))
    rate: Mapped[float | None] = mapped_column(Double)  # requests per second; None: the default
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class ApiKeyEvent(Base):
    """One change to the keys: created or revoked, when, by whom."""

    __tablename__ = "api_key_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)


class KeyRefused(ValueError):
    """A key operation refused, with the reason."""


class KeyExists(KeyRefused):
    """A key of that name exists (revoked ones too)."""


def actor() -> str:
    """Who runs this command, for the audit rows."""
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return "os:unknown"


def create_key(sessions: sessionmaker, name: str, scope: Scope, *, device_id: str | None = None,
               rate: float | None = None, by: str | None = None) -> tuple[str, ApiKey]:
    """Make and store key ``name``; the key itself is returned once and never stored."""
    check_new(name, scope, device_id, rate)
    token, key_id = new_key()
    row = ApiKey(name=name, key_id=key_id, hash=hash_key(token), scope=scope.value,
                 device_id=device_id, rate=rate, created_by=by or actor())
    exists = KeyExists(f"a key named {name!r} exists (revoked keys keep their name)")
    try:
        with sessions.begin() as s:
            if s.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
                raise exists
            s.add(row)
            s.add(ApiKeyEvent(action="create", name=name, actor=row.created_by,
                              detail={"scope": scope.value, "device_id": device_id,
                                      "rate": rate}))
    except IntegrityError:  # another creation of the same name won the race
        raise exists from None
    return token, row


def check_new(name: str, scope: Scope, device_id: str | None, rate: float | None) -> None:
    """Refuse a key that could not be used as asked."""
    if not NAME.match(name):
        raise KeyRefused(f"{name!r}: a key's name is 1-64 letters, digits, '.', '_' or '-'")
    if scope is Scope.ingest and not device_id:
        raise KeyRefused("an ingest key is bound to one device: pass --device")
    if device_id and scope is not Scope.ingest:
        raise KeyRefused("only an ingest key is bound to a device")
    if rate is not None and not rate > 0:
        raise KeyRefused(f"--rate must be positive, not {rate}")


def revoke_key(sessions: sessionmaker, name: str, *, by: str | None = None) -> ApiKey:
    """Revoke key ``name`` (kept, with the time it was revoked)."""
    by = by or actor()
    with sessions.begin() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.name == name))
        if row is None:
            raise KeyRefused(f"no key named {name!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            s.add(ApiKeyEvent(action="revoke", name=name, actor=by))
            s.flush()
        s.expunge(row)
    return row


def list_keys(sessions: sessionmaker) -> list[ApiKey]:
    """Every key, oldest first (hashes included: the caller shows what it needs)."""
    with sessions() as s:
        rows = list(s.scalars(select(ApiKey).order_by(ApiKey.id)))
        s.expunge_all()
    return rows


def key_events(sessions: sessionmaker, limit: int = 50) -> list[ApiKeyEvent]:
    """The latest changes to the keys, newest first."""
    with sessions() as s:
        rows = list(s.scalars(select(ApiKeyEvent).order_by(ApiKeyEvent.id.desc()).limit(limit)))
        s.expunge_all()
    return rows


def grants(sessions: sessionmaker | None, configured: dict[str, ConfiguredKey]
           ) -> dict[str, Grant]:
    """Every key a server knows, by key id: the table's (revoked ones marked) and the
    setting's."""
    out = {c.key_id: Grant(name, c.key_id, c.hash, c.scope, c.device_id, c.rate)
           for name, c in configured.items()}
    if sessions is not None:
        with sessions() as s:
            for row in s.scalars(select(ApiKey)):
                out[row.key_id] = Grant(row.name, row.key_id, row.hash, Scope(row.scope),
                                        row.device_id, row.rate, row.revoked_at is not None)
    return out


def mark_used(sessions: sessionmaker, used: dict[str, datetime]) -> None:
    """Record when each key id in ``used`` was last used (a server flushes this now and
    then, not per request)."""
    with sessions.begin() as s:
        for key_id, at in used.items():
            s.execute(update(ApiKey).where(ApiKey.key_id == key_id).values(last_used_at=at))


def describe(row: ApiKey) -> dict[str, Any]:
    """What may be shown of a key: everything but its hash."""
    def iso(at: datetime | None) -> str | None:
        return at.isoformat() if at else None

    return {"name": row.name, "key_id": row.key_id, "scope": row.scope,
            "device_id": row.device_id, "rate": row.rate, "created_at": iso(row.created_at),
            "created_by": row.created_by, "last_used_at": iso(row.last_used_at),
            "revoked_at": iso(row.revoked_at)}
