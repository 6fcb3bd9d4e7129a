"""What a model sees: one image's bytes -> the uint8 tensor training read.

Training reads images the dataset stage stored (:func:`shard_jpeg`: RGB, resized to the
model's input size, JPEG at quality 90) and decodes them with :func:`decode`. Batch scoring
and the online endpoint call :func:`model_input`, the same two steps, so a served image is
the image the network was trained on, byte for byte, and the two cannot drift apart.

Torch is imported inside :func:`decode`: the dataset stage runs under ``dvc repro`` and
imports nothing heavy.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

JPEG_QUALITY = 90


def shard_jpeg(data: bytes | Image.Image, size: int) -> bytes:
    """``data`` (bytes of any format PIL reads, or an opened image) as an RGB ``size`` x
    ``size`` JPEG: what shards store."""
    from PIL import Image

    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def decode(jpeg: bytes) -> torch.Tensor:
    """A stored JPEG as a (3, H, W) uint8 tensor; the network scales it on its own device."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8),
                       mode=ImageReadMode.RGB)


def model_input(data: bytes | Image.Image, size: int) -> torch.Tensor:
    """The tensor a model of input ``size`` gets for an image: shard it, then decode it."""
    return decode(shard_jpeg(data, size))
