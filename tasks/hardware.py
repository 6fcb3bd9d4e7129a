"""Where a training runs: accelerator, devices, strategy, precision and loader workers.

Read from the worker's settings (``OCEANML_TRAIN_*``), not from ``params.yaml``: the same
training key trains on a laptop CPU or a GPU worker, and only the Trainer arguments differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from oceanml.settings import Settings


@dataclass(frozen=True)
class Hardware:
    """Where a training runs, from the worker's settings (``OCEANML_TRAIN_*``)."""

    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    num_workers: int = -1

    @classmethod
    def from_settings(cls, settings: Settings) -> Hardware:
        return cls(settings.train_accelerator, settings.train_devices, settings.train_strategy,
                   settings.train_num_nodes, settings.train_precision, settings.train_num_workers)

    @property
    def gpu(self) -> bool:
        import torch

        return self.accelerator in ("gpu", "cuda") or (
            self.accelerator == "auto" and torch.cuda.is_available())

    def trainer_kwargs(self) -> dict[str, Any]:
        """Resolved Lightning ``Trainer`` arguments for this machine."""
        import torch

        gpu = self.gpu
        precision = self.precision
        if precision == "auto":
            precision = "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"
        devices: str | int = int(self.devices) if self.devices.isdigit() else self.devices
        strategy = self.strategy
        if strategy == "auto" and self._device_count(devices, gpu) > 1:
            # Lightning's default "ddp" re-executes sys.argv in each child process, which
            # here is the Prefect worker or flow; spawning runs only the fit in the children
            strategy = "ddp_spawn"
        return {"accelerator": self.accelerator, "devices": devices, "strategy": strategy,
                "num_nodes": self.num_nodes, "precision": precision}

    def loader_workers(self) -> int:
        """Decoding processes. On a GPU they keep it fed; on a CPU they take cores from the
        math itself, so the default there is a quarter of the cores (none on a laptop)."""
        if self.num_workers >= 0:
            return self.num_workers
        cores = os.cpu_count() or 1
        return min(8, cores - 1) if self.gpu else min(8, cores // 4)

    @staticmethod
    def _device_count(devices: str | int, gpu: bool) -> int:
        import torch

        if isinstance(devices, int):
            return devices
        if devices == "auto":
            return torch.cuda.device_count() if gpu else 1
        if devices == "-1":
            return torch.cuda.device_count() if gpu else 1
        return len([d for d in devices.split(",") if d.strip()])
