"""Every request gets an id (the caller's ``X-Request-ID`` when it is a sane one, else a new
one), returned in the response, written in the request's log line and in the prediction rows
it made: one string ties what a client saw to what the server logged and stored."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

SANE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
log = logging.getLogger("oceanml.serve.access")
errors = logging.getLogger("oceanml.serve")


def request_id(given: str | None) -> str:
    """``given`` when it is 1-64 safe characters, else a fresh one (never the caller's junk
    in a log line)."""
    return given if given and SANE.match(given) else uuid.uuid4().hex


class RequestIds:
    """Pure ASGI middleware (no per-request task, unlike Starlette's ``BaseHTTPMiddleware``):
    the id goes in ``request.state.request_id`` and the ``X-Request-ID`` response header; one
    log line per request, with the key's name when a route set ``request.state.client``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"]
                      if k == b"x-request-id"), None)
        rid = request_id(given)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        started = time.perf_counter()
        status = 500
        body_read = not has_body(scope["headers"])

        async def receive_noting_the_end() -> dict:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read = True
            return message

        started_response = False

        async def send_with_id(message: dict) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                if not body_read and not any(k.lower() == b"connection" for k, _ in headers):
                    # answered before the body was read (refused early): the client could
                    # otherwise trickle the rest for ever on a kept-alive connection
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive_noting_the_end, send_with_id)
        except Exception:
            # answered here rather than by Starlette's last-resort handler, which knows no id
            errors.exception("request %s failed", rid, extra={"request_id": rid})
            if started_response:
                raise
            await send_with_id({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(
                {"error": "internal", "detail": f"the server failed on this request; "
                 f"its log says why under request_id={rid}"}).encode()})
        finally:
            ms = round((time.perf_counter() - started) * 1000, 1)
            path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")  # as sent:
            # the decoded path could carry a CR/LF into the log
            log.info("%s %s %s %.1f ms request_id=%s key=%s", scope["method"], path,
                     status, ms, rid, state.get("client") or "-",
                     extra={"request_id": rid, "status": status, "ms": ms,
                            "method": scope["method"], "path": path,
                            "client": state.get("client")})


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request announces a body (a non-zero length, or chunks)."""
    for name, value in headers:
        name = name.lower()
        if (name == b"content-length" and value.strip() not in (b"0", b"")) or \
                name == b"transfer-encoding":
            return True
    return False
