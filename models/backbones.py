"""Torchvision backbones chosen by name, with their classifier removed.

Nothing is downloaded: ``weights`` is ``None`` (train from scratch), a local file holding a
state dict, or the name of a torchvision weights enum that the user already has in the torch
cache (``$TORCH_HOME``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")


def _first_linear(module: nn.Module) -> nn.Linear:
    if isinstance(module, nn.Linear):
        return module
    for child in module.modules():
        if isinstance(child, nn.Linear):
            return child
    raise ValueError(f"no Linear layer in head {module.__class__.__name__}")


def build_backbone(name: str, weights: str | Path | None = None) -> tuple[nn.Module, int]:
    """The feature extractor of torchvision model ``name`` and its feature width."""
    local = weights is not None and Path(weights).is_file()
    net = tvm.get_model(name, weights=None if local or weights is None else str(weights))
    if local:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        net.load_state_dict(state, strict=False)
    for attr in HEAD_ATTRIBUTES:
        head = getattr(net, attr, None)
        if isinstance(head, nn.Module):
            features = _first_linear(head).in_features
            setattr(net, attr, nn.Identity())
            return net, features
    raise ValueError(f"don't know where the classifier of {name} is")
