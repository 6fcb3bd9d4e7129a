"""``POST /v1/observations``: devices upload over HTTP instead of writing into the landing
bucket with credentials that can write every device's files.

A request is multipart: ``image`` file parts, each with the ``sidecar`` part (JSON, a field
or a file) at the same position. The key must have the ``ingest`` scope and be bound to the
sidecar's ``device_id`` (an admin key may upload for any device). Each pair passes the checks
ingestion makes (:func:`tasks.landing.check_pair`, the same code) and is written to the
landing zone under ``<day>/<device>/<content hash>``: image first, sidecar last, so the
nightly and the monitor ingest it as any landing pair. The same upload again is "already
received" and writes nothing, so a device may resend whatever it is not sure arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from core.access import Grant, Scope
from core.db import Observation
from core.store import filesystem, put_if_absent
from oceanml.serving.inputs import STATUS, BadInput
from oceanml.serving.reading import declared_size, read_form
from tasks.ingest import load_device_registry
from tasks.landing import CheckedPair, check_pair, ingest_limits
from tasks.validate import Rejection

SUFFIX = {"JPEG": ".jpg", "PNG": ".png"}


@dataclass
class Outcome:
    status: str  # accepted | already_received | refused
    content_hash: str | None = None
    key: str | None = None
    reason: str | None = None
    detail: str | None = None

    def body(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


class Uploads:
    """Checks and writes uploaded observations into the landing zone."""

    def __init__(self, settings: Any, sessions: Any) -> None:
        self.settings, self.sessions = settings, sessions
        self.landing = filesystem(settings.landing_url, settings)
        self.devices = load_device_registry(settings)

    def accept(self, pairs: list[tuple[bytes, bytes]], grant: Grant | None) -> list[Outcome]:
        """Check every pair, refuse the request (403, nothing written) if one is another
        device's, then write each that passed and was not received before."""
        limits = ingest_limits(self.settings, devices=self.devices)
        checked: list[CheckedPair | Outcome] = []
        for image, raw_sidecar in pairs:
            try:
                checked.append(check_pair(image, raw_sidecar, self.settings, limits))
            except Rejection as exc:
                checked.append(Outcome("refused", reason=exc.reason, detail=exc.detail))
        for c in checked:
            device = c.sidecar.device_id if isinstance(c, CheckedPair) else None
            if device and grant and grant.scope is Scope.ingest and grant.device_id != device:
                raise BadInput(403, "wrong_device", f"key {grant.name!r} uploads as device "
                               f"{grant.device_id!r}, not {device!r}; nothing was written")
        return [self._store(c, image, raw_sidecar) if isinstance(c, CheckedPair) else c
                for c, (image, raw_sidecar) in zip(checked, pairs, strict=True)]

    def _store(self, checked: CheckedPair, image: bytes, raw_sidecar: bytes) -> Outcome:
        sidecar = checked.sidecar
        stem = f"{sidecar.observed_at:%Y-%m-%d}/{sidecar.device_id}/{checked.content_hash}"
        sidecar_key = f"{stem}.json"
        if self._received(checked.content_hash, sidecar_key):
            return Outcome("already_received", checked.content_hash, sidecar_key)
        put_if_absent(self.landing, stem + SUFFIX.get(checked.image_format, ".jpg"), image)
        put_if_absent(self.landing, sidecar_key, raw_sidecar)  # last: the pair is complete
        return Outcome("accepted", checked.content_hash, sidecar_key)

    def _received(self, content_hash: str, sidecar_key: str) -> bool:
        if self.landing.fs.exists(self.landing.path(sidecar_key)):
            return True
        with self.sessions() as s:  # ingested, and the landing file since removed
            return s.scalar(select(Observation.id)
                            .where(Observation.content_hash == content_hash)) is not None


def observation_routes(service: Any) -> APIRouter:
    """The upload route of ``service`` (an :class:`oceanml.serving.service.Service`)."""
    router = APIRouter()
    ingest = service.needs(Scope.ingest)
    uploads = Uploads(service.settings, service.sessions)

    @router.post("/v1/observations")
    async def upload(request: Request, grant: Grant | None = ingest) -> JSONResponse:
        async with service.budget.hold(declared_size(service, request)) as held:
            form = await read_form(service, request, held)
            try:  # the parts are spooled files (up to the image limit each): read off the loop
                pairs = await run_in_threadpool(pairs_of, form)
            finally:
                await form.close()
            outcomes = await run_in_threadpool(uploads.accept, pairs, grant)
        return answer(outcomes)

    return router


def pairs_of(form: Any) -> list[tuple[bytes, bytes]]:
    """The (image, sidecar) pairs of a form, matched by position."""
    images = [p for p in form.getlist("image") if hasattr(p, "read")]
    sidecars = [p.file.read() if hasattr(p, "read") else p.encode()
                for p in form.getlist("sidecar")]
    if not images:
        raise BadInput(422, "no_image", "send the image as a file part named 'image'")
    if len(images) != len(sidecars):
        raise BadInput(422, "missing_sidecar", f"{len(images)} image part(s) and "
                       f"{len(sidecars)} sidecar part(s): send one sidecar per image, in order")
    return [(image.file.read(), sidecar) for image, sidecar in zip(images, sidecars,
                                                                   strict=True)]


def answer(outcomes: list[Outcome]) -> JSONResponse:
    """One pair: 202 accepted, 200 already received, or its refusal's 4xx. Several: the
    list, with 202 when any was accepted, 200 when none was and none refused, else the
    first refusal's status."""
    if len(outcomes) == 1:
        only = outcomes[0]
        if only.status == "refused":
            return JSONResponse({"error": only.reason, "detail": only.detail},
                                status_code=STATUS.get(only.reason, 422))
        return JSONResponse(only.body(), status_code=202 if only.status == "accepted" else 200)
    refused = [o for o in outcomes if o.status == "refused"]
    status = (202 if any(o.status == "accepted" for o in outcomes)
              else STATUS.get(refused[0].reason, 422) if refused else 200)
    return JSONResponse({"observations": [o.body() for o in outcomes]}, status_code=status)
