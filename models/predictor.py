"""A registered model version ready to answer: batch scoring and the online endpoint use it.

:func:`load_predictor` reads the version's network and spec from the registry;
:meth:`Predictor.prepare` turns image bytes into the input training saw
(:func:`models.preprocess.model_input`), :meth:`Predictor.outputs` runs a batch on the
predictor's device (bf16 autocast on a GPU that has it), and :func:`answers` turns the outputs
into the class, probabilities or values a caller reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from models.preprocess import model_input
from models.zoo import ModelSpec, get_spec

if TYPE_CHECKING:
    import torch
    from mlflow.tracking import MlflowClient


def version_spec(mlc: MlflowClient, name: str, version: str) -> ModelSpec:
    """The spec a version was trained with (its ``model_spec`` tag): classes and input size.

    A version registered by other means has no tag; it gets the zoo's spec, whose input size
    may not be the one it was trained at, so that is refused rather than guessed.
    """
    tags = mlc.get_model_version(name, version).tags or {}
    if "model_spec" not in tags:
        raise LookupError(f"{name} v{version} has no model_spec tag: it was not registered by "
                          "OceanML's train stage, so its input size and classes are unknown")
    doc = json.loads(tags["model_spec"])
    doc["outputs"] = tuple(doc["outputs"])
    return get_spec(name).with_overrides(**doc)


@dataclass
class Predictor:
    """One version's network on one device, with the spec that says how to read its outputs."""

    name: str
    version: str
    spec: ModelSpec
    net: Any
    device: str = "cpu"
    bf16: bool = False
    loaded_at: float = field(default_factory=time.time)

    @property
    def prepare(self) -> Callable[[bytes], torch.Tensor]:
        """Image bytes -> the (3, H, W) uint8 tensor this version was trained on. A partial of
        a module function, so DataLoader workers receive it without the network."""
        return partial(model_input, size=self.spec.input_size)

    def outputs(self, images: torch.Tensor) -> np.ndarray:
        """Class probabilities (softmax) or values for a (N, 3, H, W) uint8 batch, float32."""
        import contextlib

        import torch

        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            out = self.net(images.to(self.device, non_blocking=True))
            if self.spec.task == "classification":
                out = torch.softmax(out.float(), dim=1)
        return out.float().cpu().numpy()


    def embeddings(self, images: torch.Tensor) -> np.ndarray:
        """The backbone's features of a (N, 3, H, W) uint8 batch, float32 (drift's view)."""
        import torch

        with torch.inference_mode():
            return self.net.embed(images.to(self.device)).float().cpu().numpy()


def answers(spec: ModelSpec, outputs: np.ndarray) -> list[dict[str, Any]]:
    """Per image: ``label`` and ``probabilities`` (classification) or ``values`` (regression)."""
    if spec.task == "classification":
        return [{"label": spec.outputs[int(row.argmax())],
                 "probabilities": {c: float(p) for c, p in zip(spec.outputs, row, strict=True)}}
                for row in outputs]
    return [{"values": {t: float(v) for t, v in zip(spec.outputs, row, strict=True)}}
            for row in outputs]


def pick_device() -> tuple[str, bool]:
    """``cuda`` with bf16 where the GPU runs it natively, else ``cpu`` in float32."""
    from core.hardware import Machine

    machine = Machine.detect()
    return ("cuda", machine.supports_bf16()) if machine.cuda else ("cpu", False)


def load_predictor(mlc: MlflowClient, name: str, version: str,
                   device: str | None = None) -> Predictor:
    """``name`` v``version`` from the registry, in eval mode on ``device`` (default: best)."""
    from core.registry import load_model

    spec = version_spec(mlc, name, str(version))
    bf16 = False
    if device is None:
        device, bf16 = pick_device()
    net = load_model(mlc, name, str(version)).eval().to(device)
    return Predictor(name, str(version), spec, net, device, bf16)
