"""``/v1/keys``: list, create and revoke API keys over HTTP with an admin key (the audit rows
name that key as who did it). With no key yet there is no admin key: the first one is made
with ``oceanml keys create`` on a machine that reaches the database."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from core.access import Grant, Scope
from core.keys import KeyExists, KeyRefused, create_key, describe, list_keys, revoke_key
from oceanml.serving.inputs import BadInput


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    scope: Scope
    device_id: str | None = None
    rate: float | None = Field(None, gt=0)


def key_routes(service: Any) -> APIRouter:
    """The key routes of ``service`` (an :class:`oceanml.serving.service.Service`)."""
    router = APIRouter(prefix="/v1/keys")
    admin = service.needs(Scope.admin)

    @router.get("")
    async def listed(grant: Grant | None = admin) -> dict[str, Any]:
        by(grant)
        rows = await run_in_threadpool(list_keys, service.sessions)
        return {"keys": [describe(row) for row in rows]}

    @router.post("", status_code=201)
    async def created(request: Request, grant: Grant | None = admin) -> dict[str, Any]:
        by(grant)  # before a byte of the body is read
        new = await read_new_key(request)
        try:
            key, row = await run_in_threadpool(
                lambda: create_key(service.sessions, new.name, new.scope,
                                   device_id=new.device_id, rate=new.rate, by=by(grant)))
        except KeyRefused as exc:
            raise BadInput(409 if isinstance(exc, KeyExists) else 422, "bad_key",
                           str(exc)) from None
        return {**describe(row), "key": key,
                "note": "shown once: store it now, only its hash is kept"}

    @router.delete("/{name}")
    async def revoked(name: str, grant: Grant | None = admin) -> dict[str, Any]:
        try:
            row = await run_in_threadpool(lambda: revoke_key(service.sessions, name,
                                                             by=by(grant)))
        except KeyRefused as exc:
            raise BadInput(404, "unknown_key", str(exc)) from None
        return describe(row)

    return router


MAX_BODY = 4096


async def read_new_key(request: Request) -> NewKey:
    """The body of a key creation: small JSON, refused past ``MAX_BODY`` bytes."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadInput(413, "body_too_large", f"more than {MAX_BODY} bytes")
    try:
        return NewKey.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadInput(422, "bad_key", f"{where}: {first['msg']}") from None


def by(grant: Grant | None) -> str:
    """Who asks, for the audit row; keys are never managed over an open server."""
    if grant is None:
        raise BadInput(403, "forbidden", "keys are managed over HTTP with an admin key; make "
                       "the first with `oceanml keys create NAME --scope admin`")
    return f"key:{grant.name}"
