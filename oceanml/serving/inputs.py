"""Request bodies -> checked images, or a :class:`BadInput` that becomes a 4xx JSON answer.

Two shapes are read: ``multipart/form-data`` (one or more file parts; an optional
``readings`` field holding JSON) and ``application/json`` (``{"image": <base64>}`` or
``{"images": [<base64>, ...]}``, optional ``"readings": {...}``). Images pass the ingestion
limits (bytes, pixels, decodable) before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tasks.validate import Readings, Rejection, open_checked

# A refused image's reason -> the status that says it: too big is 413, the rest cannot be read.
STATUS = {"image_too_large": 413, "sidecar_too_large": 413, "decompression_bomb": 413}


class BadInput(Exception):
    """A request OceanML will not answer, with the status and a reason code and detail."""

    def __init__(self, status: int, reason: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail = status, reason, detail
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int
    max_image_pixels: int
    max_images: int

    @property
    def max_body_bytes(self) -> int:
        """base64 adds a third; multipart and JSON framing a little more."""
        return self.max_images * (self.max_image_bytes * 4 // 3 + 4096) + 65536


@dataclass
class Request:
    images: list[bytes]
    readings: dict[str, Any] = field(default_factory=dict)


def parse(content_type: str, body: bytes, form: Any | None, limits: Limits) -> Request:
    """The images and readings of a request; ``form`` is the parsed multipart form, if any."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        images, readings = _from_form(form, limits)
    elif kind == "application/json":
        images, readings = _from_json(body)
    else:
        raise BadInput(415, "unsupported_media_type",
                       f"send multipart/form-data or application/json, not {kind or 'nothing'}")
    if not images:
        raise BadInput(422, "no_image", "the request carries no image")
    if len(images) > limits.max_images:
        raise BadInput(413, "too_many_images",
                       f"{len(images)} images > limit {limits.max_images} per request")
    return Request(images, check_readings(readings))


def _from_form(form: Any, limits: Limits) -> tuple[list[bytes], Any]:
    images = [part for _, part in form.multi_items() if hasattr(part, "read")]
    for n, part in enumerate(images):  # spooled: refused before it is read into memory
        if part.size is not None and part.size > limits.max_image_bytes:
            raise BadInput(413, "image_too_large",
                           f"image {n}: {part.size} bytes > limit {limits.max_image_bytes}")
    raw = form.get("readings")
    readings = None
    if isinstance(raw, str):
        try:
            readings = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadInput(422, "bad_readings", f"readings is not JSON: {exc}") from None
    return [part.file.read() for part in images], readings


def _from_json(body: bytes) -> tuple[list[bytes], Any]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(422, "bad_json", f"the body is not JSON: {exc}") from None
    except RecursionError:  # [[[[... nested past the parser's depth
        raise BadInput(422, "bad_json", "the body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadInput(422, "bad_json", 'expected an object with "image" or "images"')
    encoded = doc.get("images", [doc["image"]] if "image" in doc else [])
    if not isinstance(encoded, list) or not all(isinstance(e, str) for e in encoded):
        raise BadInput(422, "bad_json", '"images" must be a list of base64 strings')
    images = []
    for n, text in enumerate(encoded):
        try:
            images.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise BadInput(422, "bad_base64", f"image {n} is not valid base64") from None
    return images, doc.get("readings")


def check_readings(readings: Any) -> dict[str, Any]:
    """Readings checked against the same physical ranges as a device's sidecar."""
    if readings is None:
        return {}
    if not isinstance(readings, dict):
        raise BadInput(422, "bad_readings", "readings must be an object of sensor: value")
    try:
        return Readings.model_validate(readings).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadInput(422, "bad_readings", f"{where}: {first['msg']}") from None


def open_image(data: bytes, n: int, limits: Limits) -> Any:
    """Image ``n`` opened under the ingestion limits, or the 4xx that says why not."""
    try:
        return open_checked(data, max_bytes=limits.max_image_bytes,
                            max_pixels=limits.max_image_pixels)
    except Rejection as exc:
        raise BadInput(STATUS.get(exc.reason, 422), exc.reason, f"image {n}: {exc.detail}") from None
