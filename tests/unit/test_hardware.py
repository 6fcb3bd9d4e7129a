"""Hardware: every ``auto`` setting resolved for GPU, multi-GPU and CPU machines, on a CPU.

The machine facts are plain :class:`Machine` values, so the GPU branches run here; only the
probe itself (:meth:`Machine.detect`) is tested through monkeypatched ``torch.cuda`` calls.
"""

from __future__ import annotations

import pytest
import torch

from core.hardware import Hardware, Machine
from core.settings import Settings

BF16_GPUS = Machine(cuda=True, gpus=4, cores=32, bf16=True)  # e.g. 4 x A100/H100
OLD_GPU = Machine(cuda=True, gpus=1, cores=8, bf16=False)  # e.g. a T4: no native bf16
ONE_BF16_GPU = Machine(cuda=True, gpus=1, cores=16, bf16=True)
LAPTOP = Machine(cuda=False, gpus=0, cores=8, bf16=False)


def no_bf16_probe() -> bool:
    raise AssertionError("asked torch about bf16: that initialises CUDA in this process")


@pytest.mark.parametrize(("machine", "precision"), [
    (BF16_GPUS, "bf16-mixed"),
    (ONE_BF16_GPU, "bf16-mixed"),
    (OLD_GPU, "32-true"),
    (LAPTOP, "32-true"),
])
def test_auto_precision_is_bf16_only_on_a_gpu_that_runs_it(machine, precision) -> None:
    """bf16-mixed halves memory traffic where the GPU has bf16 units; elsewhere it would be
    emulated or unsupported, so ``auto`` falls back to full precision."""
    assert Hardware().trainer_kwargs(machine)["precision"] == precision


def test_a_cpu_accelerator_on_a_gpu_machine_trains_in_full_precision_on_the_cpu() -> None:
    """An operator who pins ``cpu`` on a GPU box gets CPU defaults throughout."""
    hardware = Hardware(accelerator="cpu")
    kwargs = hardware.trainer_kwargs(BF16_GPUS)
    assert not hardware.uses_gpu(BF16_GPUS)
    assert kwargs == {"accelerator": "cpu", "devices": "auto", "strategy": "auto",
                      "num_nodes": 1, "precision": "32-true"}
    assert hardware.loader_workers(BF16_GPUS) == 32 // 4


def test_an_explicit_gpu_accelerator_counts_as_gpu_without_cuda_being_probed() -> None:
    """``gpu``/``cuda`` are the operator's word; ``auto`` follows the machine."""
    assert Hardware(accelerator="gpu").uses_gpu(LAPTOP)
    assert Hardware(accelerator="cuda").uses_gpu(LAPTOP)
    assert Hardware().uses_gpu(ONE_BF16_GPU) and not Hardware().uses_gpu(LAPTOP)
    assert not Hardware(accelerator="mps").uses_gpu(ONE_BF16_GPU)


@pytest.mark.parametrize(("devices", "machine", "passed", "strategy"), [
    ("auto", BF16_GPUS, "auto", "ddp_spawn"),  # every one of the 4 GPUs
    ("-1", BF16_GPUS, "-1", "ddp_spawn"),
    ("auto", ONE_BF16_GPU, "auto", "auto"),
    ("-1", ONE_BF16_GPU, "-1", "auto"),
    ("0,1", BF16_GPUS, "0,1", "ddp_spawn"),  # indices: two devices
    ("3,", BF16_GPUS, "3,", "auto"),  # Lightning reads "3," as the one device with index 3
    ("2", BF16_GPUS, 2, "ddp_spawn"),  # a count
    ("1", BF16_GPUS, 1, "auto"),
    (" 2", BF16_GPUS, 2, "ddp_spawn"),  # as Lightning reads it
    ("auto", LAPTOP, "auto", "auto"),  # one CPU process
    ("2", LAPTOP, 2, "ddp_spawn"),  # two CPU processes, as tests/model/test_distributed runs
])
def test_devices_are_counted_as_lightning_counts_them(devices, machine, passed, strategy
                                                      ) -> None:
    """More than one device needs DDP, and Lightning's plain ``ddp`` re-runs sys.argv (the
    Prefect worker) in every child, so ``auto`` must turn into ``ddp_spawn`` exactly when
    Lightning will start more than one process."""
    kwargs = Hardware(devices=devices).trainer_kwargs(machine)
    assert (kwargs["devices"], kwargs["strategy"]) == (passed, strategy)


def test_device_count_follows_the_gpus_of_the_machine() -> None:
    """``auto`` and ``-1`` mean every GPU: 4 on one box, 8 on another."""
    eight = Machine(cuda=True, gpus=8, cores=64, bf16=True)
    assert Hardware.device_count("auto", True, eight) == 8
    assert Hardware.device_count("-1", True, BF16_GPUS) == 4
    assert Hardware.device_count("auto", False, eight) == 1
    assert Hardware.device_count("0,1,2", True, eight) == 3
    assert Hardware.device_count(5, True, eight) == 5


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed_stage_2"])
def test_an_explicit_strategy_wins_over_ddp_spawn(strategy) -> None:
    """An operator who launches with torchrun (plain ``ddp``) or shards the model chooses."""
    kwargs = Hardware(devices="auto", strategy=strategy).trainer_kwargs(BF16_GPUS)
    assert kwargs["strategy"] == strategy


def test_explicit_settings_pass_through_unchanged() -> None:
    """Nothing set explicitly is second-guessed, on any machine."""
    hardware = Hardware(accelerator="gpu", devices="0,1", strategy="ddp", num_nodes=2,
                        precision="16-mixed", num_workers=3)
    expected = {"accelerator": "gpu", "devices": "0,1", "strategy": "ddp", "num_nodes": 2,
                "precision": "16-mixed"}
    for machine in (BF16_GPUS, OLD_GPU, LAPTOP):
        assert hardware.trainer_kwargs(machine) == expected
        assert hardware.loader_workers(machine) == 3
    assert Hardware(precision="32-true").trainer_kwargs(BF16_GPUS)["precision"] == "32-true"
    assert Hardware(num_workers=0).loader_workers(BF16_GPUS) == 0


@pytest.mark.parametrize(("cores", "on_gpu", "on_cpu"), [
    (1, 0, 0),
    (2, 1, 0),
    (4, 3, 1),
    (8, 7, 2),
    (9, 8, 2),
    (16, 8, 4),
    (32, 8, 8),
    (96, 8, 8),
])
def test_default_loader_workers_feed_a_gpu_and_spare_a_cpu(cores, on_gpu, on_cpu) -> None:
    """On a GPU every core but the trainer's decodes (at most 8); on a CPU decoding takes cores
    from the math, so a quarter of them (none below 4 cores)."""
    gpu = Machine(cuda=True, gpus=1, cores=cores, bf16=True)
    cpu = Machine(cuda=False, gpus=0, cores=cores, bf16=False)
    assert Hardware().loader_workers(gpu) == on_gpu
    assert Hardware().loader_workers(cpu) == on_cpu
    assert Hardware(accelerator="cpu").loader_workers(gpu) == on_cpu


def test_from_settings_reads_every_train_setting() -> None:
    """``OCEANML_TRAIN_*`` on a worker decide where it trains; none may be dropped."""
    settings = Settings(train_accelerator="gpu", train_devices="0,1", train_strategy="ddp",
                        train_num_nodes=2, train_precision="16-mixed", train_num_workers=5,
                        train_loader_timeout_s=90)
    assert Hardware.from_settings(settings) == Hardware("gpu", "0,1", "ddp", 2, "16-mixed", 5,
                                                        90.0)


def test_detect_reads_torch_and_the_cores_without_initialising_cuda(monkeypatch) -> None:
    """The probe must see what torch sees, but not create a CUDA context just to look."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: no_bf16_probe())
    monkeypatch.setattr("os.cpu_count", lambda: 12)
    assert Machine.detect() == Machine(cuda=True, gpus=2, cores=12, bf16=None)


def test_detect_on_a_machine_without_cuda(monkeypatch) -> None:
    """No CUDA: no GPUs and no bf16, whatever else torch would say; a missing core count is
    one core, not a crash."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert Machine.detect() == Machine(cuda=False, gpus=0, cores=1, bf16=False)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_is_asked_of_torch_only_when_precision_is_auto_on_a_gpu(monkeypatch, native
                                                                     ) -> None:
    """Defaults detect the machine; bf16 is the one probe that initialises CUDA, so it runs
    only for ``precision=auto`` on a GPU, and emulated bf16 does not count as bf16."""
    asked: list[dict] = []

    def bf16(**kwargs) -> bool:
        asked.append(kwargs)
        return native

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert Hardware(precision="16-mixed").trainer_kwargs()["precision"] == "16-mixed"
    assert Hardware(accelerator="cpu").trainer_kwargs()["precision"] == "32-true"
    assert asked == []
    kwargs = Hardware().trainer_kwargs()
    assert asked == [{"including_emulation": False}]
    assert kwargs == {"accelerator": "auto", "devices": "auto", "strategy": "ddp_spawn",
                      "num_nodes": 1, "precision": "bf16-mixed" if native else "32-true"}
    assert Hardware().gpu and Hardware().loader_workers() == 8


def test_the_defaults_on_this_cpu_machine_run_one_process_in_full_precision(monkeypatch
                                                                           ) -> None:
    """What a laptop or CI runner without CUDA gets from all-``auto`` settings."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert not Hardware().gpu
    assert Hardware().trainer_kwargs() == {"accelerator": "auto", "devices": "auto",
                                           "strategy": "auto", "num_nodes": 1,
                                           "precision": "32-true"}
    assert Hardware().loader_workers() == 0
