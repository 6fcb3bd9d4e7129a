"""Torchvision backbones chosen by name, with their classifier removed.

Nothing is downloaded: ``weights`` is ``None`` (train from scratch), a local file holding a
state dict, or the name of a torchvision weights enum (``ResNet50_Weights.IMAGENET1K_V2``)
that the user already has in the torch cache (``$TORCH_HOME``). A file whose keys do not match
the backbone is refused with the keys named, never loaded in part.
"""

from __future__ import annotations

import re
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


class WeightsError(ValueError):
    """Pretrained weights that cannot be used as they are: refused, with what is wrong."""


def cached_weights(weights: str) -> Path:
    """Where torch keeps the file of torchvision weights ``weights``; refused, saying where to
    put it, when it is not there (OceanML never downloads at run time)."""
    try:
        enum = tvm.get_weight(weights)
    except (ValueError, KeyError, AttributeError) as exc:
        raise WeightsError(f"weights {weights!r}: neither a file nor a torchvision weights name "
                           f"such as ResNet50_Weights.IMAGENET1K_V2 ({exc})") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if not path.is_file():
        raise WeightsError(f"weights {weights} are not in the torch cache ({path}) and OceanML "
                           f"does not download: fetch {enum.url} there on a machine with "
                           f"internet access, or give the path of a local state-dict file")
    return path


def load_weights(net: nn.Module, path: Path, name: str) -> None:
    """Load a state dict into ``net`` whole, or refuse naming the keys that do not match."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    if name.startswith("densenet"):
        state = densenet_keys(state)
    expected = net.state_dict()
    # BatchNorm's step counter is absent from checkpoints older than PyTorch 0.4.1 (most of
    # torchvision's): it starts at zero, as it would for a fresh layer
    missing = sorted(k for k in set(expected) - set(state)
                     if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected)
                    if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{len(keys)} {what} ({_some(keys)})" for what, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("keys with another shape", shapes)) if keys]
        raise WeightsError(f"{path} does not match backbone {name}: " + "; ".join(parts))
    net.load_state_dict(state, strict=False)  # every other key was checked above


# torchvision's DenseNet checkpoints keep the old "denselayer1.norm.1.weight" names that its
# own loader renames to "denselayer1.norm1.weight" (torchvision.models.densenet)
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def densenet_keys(state: dict) -> dict:
    """A DenseNet state dict with the old layer names renamed as torchvision renames them."""
    return {(m.group(1) + m.group(2) if (m := _DENSENET_OLD_KEY.match(k)) else k): v
            for k, v in state.items()}


def _some(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "")


def build_backbone(name: str, weights: str | Path | None = None) -> tuple[nn.Module, int]:
    """The feature extractor of torchvision model ``name`` and its feature width."""
    net = tvm.get_model(name, weights=None)
    if weights is not None:
        path = Path(weights) if Path(weights).is_file() else cached_weights(str(weights))
        load_weights(net, path, name)
    for attr in HEAD_ATTRIBUTES:
        head = getattr(net, attr, None)
        if isinstance(head, nn.Module):
            features = _first_linear(head).in_features
            setattr(net, attr, nn.Identity())
            return net, features
    raise ValueError(f"don't know where the classifier of {name} is")
