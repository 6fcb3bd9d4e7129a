"""The inference network: normalisation + backbone + head in one plain ``nn.Module``.

This is what MLflow stores and what evaluation and scoring load: it takes images (N, 3, H, W),
float in [0, 1] or uint8 in [0, 255], and returns calibrated logits (classification) or values
in [0, 1] (regression).
"""

from __future__ import annotations

import torch
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class OceanNet(nn.Module):
    """Backbone and head, with what turns the head's output into an answer.

    Classification: logits divided by the version's ``temperature`` (fit on the validation
    split after training, :mod:`models.calibration`), so the softmax that scoring and the
    endpoint take is calibrated, and the argmax is unchanged. Regression: the head predicts
    each target standardised by the train split's mean and standard deviation (every target
    weighs the same in the loss, whatever its spread), and the answer is put back on the
    targets' [0, 1] scale. Both live in buffers: they are part of the stored version.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_outputs: int, task: str,
                 target_mean: list[float] | None = None,
                 target_std: list[float] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_outputs)
        self.task = task
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        if task == "regression":
            mean = torch.full((num_outputs,), 0.5) if target_mean is None else \
                torch.as_tensor(target_mean, dtype=torch.float32)
            spread = torch.full((num_outputs,), 0.25) if target_std is None else \
                torch.as_tensor(target_std, dtype=torch.float32)
            self.register_buffer("target_mean", mean.view(1, -1))
            self.register_buffer("target_std", spread.clamp_min(1e-4).view(1, -1))
            nn.init.zeros_(self.head.bias)  # starts at the train mean: R2 0, not below
        else:
            self.register_buffer("temperature", torch.ones(1))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features of ``images``: what the head reads, what drift compares."""
        if images.dtype == torch.uint8:
            # loaders send bytes, a quarter of float32 to pass between processes and to the
            # GPU; they are scaled here, on the device that runs the network
            images = images.float().div_(255.0)
        return self.backbone((images - self.mean) / self.std)

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """The head's output: logits before the temperature, or standardised target values."""
        return self.head(self.embed(images))

    def standardize(self, targets: torch.Tensor) -> torch.Tensor:
        """Regression targets on the scale the head predicts (what the loss compares)."""
        return (targets - self.target_mean) / self.target_std

    def answer(self, raw: torch.Tensor) -> torch.Tensor:
        """The head's output as the version answers: calibrated logits, or values in [0, 1]."""
        if self.task == "regression":
            if "target_mean" not in self._buffers:  # stored before targets were standardised
                return torch.sigmoid(raw)
            return (raw * self.target_std + self.target_mean).clamp(0.0, 1.0)
        temperature = self._buffers.get("temperature")  # absent from older stored versions
        return raw if temperature is None else raw / temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.answer(self.raw(images))
