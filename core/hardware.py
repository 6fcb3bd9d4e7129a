"""Where a training runs: accelerator, devices, strategy, precision and loader workers.

Read from the worker's settings (``OCEANML_TRAIN_*``), not from ``params.yaml``: the same
training key trains on a laptop CPU or a GPU worker, and only the Trainer arguments differ.
The ``auto`` settings resolve against a :class:`Machine`, the few facts probed from this
process (CUDA, bf16, GPU and core counts), so every branch is decided by plain values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from core.settings import Settings


@dataclass(frozen=True)
class Machine:
    """What this machine offers a training: the facts the ``auto`` settings depend on.

    ``bf16`` is ``None`` when not probed yet: asking torch whether the GPU runs bfloat16
    initialises CUDA in this process (after which Lightning's ``ddp_fork`` refuses to start),
    so it is asked only when a decision needs it, as before this probe existed.
    """

    cuda: bool = False
    gpus: int = 0
    cores: int = 1
    bf16: bool | None = None

    @classmethod
    def detect(cls) -> Machine:
        """This process's machine; creates no CUDA context (see ``bf16``)."""
        import torch

        cuda = torch.cuda.is_available()
        return cls(cuda=cuda, gpus=torch.cuda.device_count() if cuda else 0,
                   cores=os.cpu_count() or 1, bf16=None if cuda else False)

    def supports_bf16(self) -> bool:
        """Whether the GPU runs bfloat16 natively; an emulated bf16 (pre-Ampere GPUs, which
        torch's default check accepts) is slower than float32, so it does not count."""
        if self.bf16 is not None:
            return self.bf16
        if not self.cuda:
            return False
        import torch

        return torch.cuda.is_bf16_supported(including_emulation=False)


@dataclass(frozen=True)
class Hardware:
    """Where a training runs, from the worker's settings (``OCEANML_TRAIN_*``)."""

    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    num_workers: int = -1
    loader_timeout_s: float = 600.0  # longest wait for a batch from the loader workers; 0: none

    @classmethod
    def from_settings(cls, settings: Settings) -> Hardware:
        return cls(settings.train_accelerator, settings.train_devices, settings.train_strategy,
                   settings.train_num_nodes, settings.train_precision, settings.train_num_workers,
                   settings.train_loader_timeout_s)

    @property
    def gpu(self) -> bool:
        """Whether the training runs on CUDA devices here (see :meth:`uses_gpu`)."""
        return self.uses_gpu()

    def uses_gpu(self, machine: Machine | None = None) -> bool:
        """An explicit ``gpu``/``cuda`` accelerator, or ``auto`` where CUDA is available;
        ``machine`` defaults to this one, probed only when the accelerator is ``auto``."""
        if self.accelerator in ("gpu", "cuda"):
            return True
        if self.accelerator != "auto":
            return False
        return (machine or Machine.detect()).cuda

    def trainer_kwargs(self, machine: Machine | None = None) -> dict[str, Any]:
        """Resolved Lightning ``Trainer`` arguments for ``machine`` (default: this one)."""
        machine = machine or Machine.detect()
        gpu = self.uses_gpu(machine)
        precision = self.precision
        if precision == "auto":
            precision = "bf16-mixed" if gpu and machine.supports_bf16() else "32-true"
        spec = self.devices.strip()  # Lightning strips " 2" too; counting it as one would be wrong
        devices: str | int = int(spec) if spec.isdigit() else spec
        strategy = self.strategy
        if strategy == "auto" and self.device_count(devices, gpu, machine) > 1:
            # Lightning's default "ddp" re-executes sys.argv in each child process, which
            # here is the Prefect worker or flow; spawning runs only the fit in the children
            strategy = "ddp_spawn"
        return {"accelerator": self.accelerator, "devices": devices, "strategy": strategy,
                "num_nodes": self.num_nodes, "precision": precision}

    def loader_workers(self, machine: Machine | None = None) -> int:
        """Decoding processes. On a GPU they keep it fed; on a CPU they take cores from the
        math itself, so the default there is a quarter of the cores (none on a laptop).
        An explicit ``num_workers`` wins without probing anything."""
        if self.num_workers >= 0:
            return self.num_workers
        machine = machine or Machine.detect()
        cores = machine.cores
        return max(0, min(8, cores - 1) if self.uses_gpu(machine) else min(8, cores // 4))

    @staticmethod
    def device_count(devices: str | int, gpu: bool, machine: Machine) -> int:
        """How many processes Lightning starts per node for ``devices``: ``auto`` and ``-1``
        mean every GPU (one process on a CPU), ``"0,1"`` lists indices, a number counts."""
        if isinstance(devices, int):
            return devices
        if devices in ("auto", "-1"):
            return machine.gpus if gpu else 1
        return len([d for d in devices.split(",") if d.strip()])
