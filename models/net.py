"""The inference network: normalisation + backbone + head in one plain ``nn.Module``.

This is what MLflow stores and what evaluation and scoring load: it takes images (N, 3, H, W),
float in [0, 1] or uint8 in [0, 255], and returns logits (classification) or values in [0, 1]
(regression).
"""

from __future__ import annotations

import torch
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class OceanNet(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_outputs: int, task: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_outputs)
        self.task = task
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features of ``images``: what the head reads, what drift compares."""
        if images.dtype == torch.uint8:
            # loaders send bytes, a quarter of float32 to pass between processes and to the
            # GPU; they are scaled here, on the device that runs the network
            images = images.float().div_(255.0)
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.head(self.embed(images))
        return torch.sigmoid(out) if self.task == "regression" else out
