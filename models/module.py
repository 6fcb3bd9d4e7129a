"""One LightningModule for every spec of the zoo: classification or regression."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from models.net import OceanNet


def _metrics(task: str, num_outputs: int, prefix: str) -> torchmetrics.MetricCollection:
    if task == "classification":
        metrics = {
            "acc": torchmetrics.Accuracy(task="multiclass", num_classes=num_outputs),
            "macro_f1": torchmetrics.F1Score(
                task="multiclass", num_classes=num_outputs, average="macro"
            ),
        }
    else:
        metrics = {"mae": torchmetrics.MeanAbsoluteError(), "mse": torchmetrics.MeanSquaredError()}
    return torchmetrics.MetricCollection(metrics, prefix=prefix)


class OceanModule(L.LightningModule):
    """Wraps an injected backbone; the hyperparameters saved are everything but the backbone."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        task: str,
        num_outputs: int,
        lr: float,  # no defaults: train.<model> of params.yaml says them
        weight_decay: float,
        max_epochs: int,
        channels_last: bool = False,
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
    ) -> None:
        super().__init__()
        # channels_last is how this machine runs it, not what the model is
        self.save_hyperparameters(ignore=["backbone", "channels_last"])
        self.channels_last = channels_last
        self.net = OceanNet(backbone, feature_dim, num_outputs, task, target_mean, target_std)
        self.train_metrics = _metrics(task, num_outputs, "train/")
        self.val_metrics = _metrics(task, num_outputs, "val/")
        self.test_metrics = _metrics(task, num_outputs, "test/")

    def setup(self, stage: str) -> None:
        if self.channels_last:  # NHWC: what tensor cores want for convolutions under bf16
            self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.answer(self.raw(images))

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net.raw(images)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Loss, predictions and targets. The loss reads the head's own output: logits at
        temperature 1 (the temperature is fit after training), or standardised targets."""
        images, targets = batch
        raw = self.raw(images)
        if self.hparams.task == "classification":
            return F.cross_entropy(raw, targets), raw.argmax(dim=1), targets
        loss = F.mse_loss(raw, self.net.standardize(targets))
        return loss, self.net.answer(raw).detach(), targets

    def _step(self, batch: Any, stage: str, metrics: torchmetrics.MetricCollection) -> torch.Tensor:
        loss, preds, targets = self.model_step(batch)
        metrics.update(preds, targets)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True,
                 batch_size=targets.shape[0])
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_metrics)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_metrics)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(self.hparams.max_epochs, 1)
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
