"""Reading request bodies under the limits: the declared size checked first, then the body
read as it streams through :func:`oceanml.serving.body_budget.metered`. ``service`` is an
:class:`oceanml.serving.service.Service` (its limits and settings)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from oceanml.serving.body_budget import Held, metered
from oceanml.serving.inputs import BadInput, parse


def gone() -> BadInput:
    """The client hung up before its body arrived: nobody reads the answer, but it is no 500."""
    return BadInput(400, "client_disconnected", "the client closed the connection mid-body")


def declared_size(service: Any, request: Request) -> int:
    """The body's declared size, refused with 413 when it is over what the limits allow."""
    cap = service.limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return 0
    if int(declared) > cap:
        raise BadInput(413, "body_too_large", f"{declared} bytes > limit {cap}")
    return int(declared)


def metered_request(service: Any, request: Request, held: Held) -> Request:
    """``request`` whose body is read as it streams, counted against ``held``, refused with
    413 as soon as it outgrows the limits, 408 when the client stalls."""
    s = service.settings
    return Request(request.scope, metered(
        request.receive, held, service.limits.max_body_bytes,
        idle_s=s.serve_read_timeout_s, total_s=s.serve_body_timeout_s))


async def read_form(service: Any, request: Request, held: Held) -> Any:
    """The multipart form of ``request``, file parts spooled (not joined in memory); the
    caller closes it."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise BadInput(415, "unsupported_media_type", "send multipart/form-data")
    try:
        return await metered_request(service, request, held).form(
            max_files=service.limits.max_images + 1, max_fields=service.limits.max_images + 8)
    except BadInput:
        raise
    except ClientDisconnect:
        raise gone() from None
    except Exception as exc:  # malformed multipart, or past the part limits
        text = str(exc) or type(exc).__name__
        if "Too many files" in text or "Too many fields" in text:  # Starlette's words
            raise BadInput(413, "too_many_images", f"at most {service.limits.max_images} "
                           "images a request") from None
        raise BadInput(422, "bad_multipart", text) from None


async def read_request(service: Any, request: Request, held: Held) -> Any:
    """A prediction request's images and readings (:func:`oceanml.serving.inputs.parse`)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        try:
            body = await metered_request(service, request, held).body()
        except ClientDisconnect:
            raise gone() from None
        return parse(content_type, body, None, service.limits)
    form = await read_form(service, request, held)
    try:
        return parse(content_type, b"", form, service.limits)
    finally:
        await form.close()
