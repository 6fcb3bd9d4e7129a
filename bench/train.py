"""The training task's Lightning fit against a hand-written PyTorch loop doing the same work.

The Lightning side is the trainer the train task builds (``tasks.trainer.build_module``,
``build_data``, ``build_trainer``): MLflow logger, ``best``/``last`` checkpoints, early
stopping (patience set past the last epoch, so both sides run every epoch), the per-epoch
shuffle, validation every epoch. The hand-written loop does the same work each epoch: train
with the same net, optimiser, cosine schedule and torchmetrics, log ``train/loss`` to MLflow
every ``LOG_EVERY_N_STEPS`` steps and the epoch metrics after, validate the val split, save
``last.ckpt`` and, when the monitored metric improves, ``best.ckpt``. Both read the same
shards through the same data module and loader workers. After ``--warmup-epochs`` (worker
start-up, allocator warm-up), images/s is train images over the whole epochs' wall time,
validation and checkpoints included. Data wait is the time spent getting train batches (from
the end of a step, or the epoch start, to the batch on the device: where Lightning's
``on_train_batch_start`` fires) as a share of that wall time. Testing and model registration
follow the fit once and are left out on both sides.

    .venv/bin/python bench/train.py            # resnet18, 64 px, 2 000 observations, CPU
    .venv/bin/python bench/train.py --quick    # 320 observations at 32 px, 2 epochs
    .venv/bin/python bench/train.py --backbone resnet50 --size 224 --batch-size 256 \
        --workers 8 --observations 20000       # a GPU (bf16-mixed, channels_last)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL = "plastic-detector"


def make_shards(root: Path, size: int, observations: int) -> Path:
    """Simulated, ingested and sharded observations: the data the training task reads."""
    os.environ["OCEANML_HOME"] = str(root / "home")
    from core.database import session_factory
    from core.settings import get_settings
    from core.store import filesystem
    from oceanml.simulator import simulate, write_landing
    from tasks.dataset import select_manifest, write_manifest
    from tasks.ingest import ingest
    from tasks.shards import DatasetParams, build

    get_settings.cache_clear()
    settings = get_settings()
    end = datetime(2026, 11, 20, tzinfo=UTC)
    per_day = -(-observations // 20)
    write_landing(filesystem(settings.landing_url),
                  simulate(days=2, devices=10, per_day=per_day, end=end, annotated_fraction=1.0),
                  faults=False)
    sessions = session_factory(settings.db_url)
    ingest(settings, sessions, now=end)
    write_manifest(select_manifest(sessions, MODEL).frame, root / "manifest.csv")
    build(root / "manifest.csv", root / "shards", DatasetParams(label_key=MODEL, image_size=size), settings)
    return root / "shards"


class Clock:
    """Wall time and train-batch wait over the measured epochs."""

    def __init__(self, warmup_epochs: int) -> None:
        self.warmup_epochs = warmup_epochs
        self.measuring = False
        self.start = self.end = 0.0
        self.wait = 0.0
        self.images = 0
        self.ready = 0.0  # when this process last asked for a train batch

    def epoch_start(self, epoch: int) -> None:
        now = time.perf_counter()
        if epoch == self.warmup_epochs:
            self.measuring, self.start = True, now
        self.ready = now

    def batch_start(self, size: int) -> None:
        if self.measuring:
            self.wait += time.perf_counter() - self.ready
            self.images += size

    def batch_end(self) -> None:
        self.ready = time.perf_counter()

    def stop(self) -> None:
        self.end = time.perf_counter()

    def result(self) -> tuple[float, float]:
        seconds = self.end - self.start
        return self.images / seconds, self.wait / seconds


def setup(shards: Path, args, workdir: Path):
    """Spec, params, hardware and MLflow store shared by both sides."""
    from core.hardware import Hardware
    from models.zoo import get_spec
    from tasks.train import TrainParams

    spec = get_spec(MODEL, backbone=args.backbone, input_size=args.size)
    params = TrainParams(backbone=args.backbone, image_size=args.size, max_epochs=args.epochs,
                         batch_size=args.batch_size, patience=args.epochs + 1, lr=2e-3,
                         weight_decay=1e-4, seed=7)
    hardware = Hardware(num_workers=args.workers)
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    return spec, params, hardware, tracking


def run_lightning(shards: Path, args, workdir: Path) -> tuple[float, float]:
    import lightning as L
    from lightning.pytorch.loggers import MLFlowLogger

    from tasks.trainer import build_data, build_module, build_trainer

    spec, params, hardware, tracking = setup(shards, args, workdir)
    gpu = hardware.gpu  # probed once, not per step
    clock = Clock(args.warmup_epochs)

    class Timing(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            clock.epoch_start(trainer.current_epoch)

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            clock.batch_start(len(batch[1]))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            sync(gpu)
            clock.batch_end()

        def on_train_end(self, trainer, module) -> None:
            clock.stop()

    L.seed_everything(params.seed, workers=True, verbose=False)
    module = build_module(spec, params, hardware, shards)
    data = build_data(spec, params, hardware, shards)
    logger = MLFlowLogger(experiment_name="bench-lightning", tracking_uri=tracking)
    trainer, _ = build_trainer(spec, params, hardware, workdir / "ckpt-lightning", logger,
                               callbacks=[Timing()])
    trainer.fit(module, datamodule=data)
    return clock.result()


def sync(gpu: bool) -> None:
    """Wait for the GPU's queued work, so a step's time is its own."""
    if gpu:
        import torch

        torch.cuda.synchronize()


def run_torch(shards: Path, args, workdir: Path) -> tuple[float, float]:
    """The same epochs by hand: train, log, validate, checkpoint."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from models.backbones import build_backbone
    from models.module import _metrics
    from models.net import OceanNet
    from tasks.trainer import LOG_EVERY_N_STEPS, build_data

    spec, params, hardware, tracking = setup(shards, args, workdir)
    gpu = hardware.gpu  # probed once, not per step
    device = "cuda" if gpu else "cpu"
    precision = hardware.trainer_kwargs()["precision"]
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    L.seed_everything(params.seed, workers=True, verbose=False)
    backbone, features = build_backbone(spec.backbone, params.weights)
    net = OceanNet(backbone, features, spec.num_outputs, spec.task).to(device)
    if gpu:
        net = net.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=params.max_epochs)
    train_metrics = _metrics(spec.task, spec.num_outputs, "train/").to(device)
    val_metrics = _metrics(spec.task, spec.num_outputs, "val/").to(device)
    data = build_data(spec, params, hardware, shards)
    data.setup("fit")
    train, val = data.train_dataloader(), data.val_dataloader()
    mlc = MlflowClient(tracking)
    run_id = mlc.create_run(mlc.create_experiment("bench-torch")).info.run_id
    ckpt_dir = workdir / "ckpt-torch"
    ckpt_dir.mkdir()
    monitor, mode = spec.monitor
    best: float | None = None
    clock = Clock(args.warmup_epochs)

    def step(images, targets, metrics):
        if gpu:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            out = net(images)
            if spec.task == "classification":
                loss, preds = F.cross_entropy(out, targets), out.argmax(dim=1)
            else:
                loss, preds = F.mse_loss(out, targets), out
        metrics.update(preds, targets)
        return loss

    global_step = 0
    for epoch in range(params.max_epochs):
        data.streams["train"].set_epoch(epoch)
        clock.epoch_start(epoch)
        net.train()
        losses = []
        for images, targets in train:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            clock.batch_start(len(targets))
            loss = step(images, targets, train_metrics)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.detach())
            global_step += 1
            if global_step % LOG_EVERY_N_STEPS == 0:
                mlc.log_metric(run_id, "train/loss_step", float(loss), step=global_step)
            sync(gpu)
            clock.batch_end()
        schedule.step()
        net.eval()
        val_losses = []
        with torch.no_grad():
            for images, targets in val:
                loss = step(images.to(device), targets.to(device), val_metrics)
                val_losses.append(loss)
        values = {"train/loss_epoch": float(torch.stack(losses).mean()),
                  "val/loss": float(torch.stack(val_losses).mean()) if val_losses else 0.0,
                  **{k: float(v) for k, v in train_metrics.compute().items()},
                  **{k: float(v) for k, v in val_metrics.compute().items()}}
        train_metrics.reset()
        val_metrics.reset()
        now = int(time.time() * 1000)
        mlc.log_batch(run_id, [Metric(k, v, now, global_step) for k, v in values.items()])
        state = {"epoch": epoch, "global_step": global_step, "state_dict": net.state_dict(),
                 "optimizer": optimiser.state_dict(), "lr_scheduler": schedule.state_dict()}
        torch.save(state, ckpt_dir / "last.ckpt")
        value = values[monitor]
        if best is None or (value > best if mode == "max" else value < best):
            best = value
            torch.save(state, ckpt_dir / "best.ckpt")
    clock.stop()
    return clock.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=-1,
                        help="loader workers; -1: the training task's default for this machine")
    parser.add_argument("--observations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, choices=(1, 2), default=2,
                        help="2: torch-lightning then lightning-torch, best of each")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.observations, args.repeats, args.size = 2, 320, 1, 32
    from core.hardware import Hardware

    hardware = Hardware(num_workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="oceanml-bench-train-") as tmp:
        shards = make_shards(Path(tmp), args.size, args.observations)
        # alternate the order and keep each side's best run: the second run of a pair is
        # otherwise favoured or penalised by caches and clocks
        runs: dict[str, list[tuple[float, float]]] = {"torch": [], "lightning": []}
        for i, order in enumerate((("torch", "lightning"), ("lightning", "torch"))[: args.repeats]):
            for name in order:
                fn = run_torch if name == "torch" else run_lightning
                workdir = Path(tmp) / f"{name}-{i}"
                workdir.mkdir()
                runs[name].append(fn(shards, args, workdir))
        torch_ips, torch_wait = max(runs["torch"])
        lightning_ips, lightning_wait = max(runs["lightning"])
    device = "cuda" if hardware.gpu else "cpu"
    tag = f"{args.backbone}_{args.size}px_{device}"
    print(f"figure {tag}_loader_workers {hardware.loader_workers()} processes")
    print(f"figure {tag}_measured_epochs {args.epochs - args.warmup_epochs} epochs")
    print(f"figure {tag}_torch_images_per_s {torch_ips:.1f} images/s")
    print(f"figure {tag}_lightning_images_per_s {lightning_ips:.1f} images/s")
    print(f"figure {tag}_torch_data_wait_share {torch_wait:.3f} share")
    print(f"figure {tag}_lightning_data_wait_share {lightning_wait:.3f} share")
    print(f"ratio {tag}_lightning_vs_torch {lightning_ips / torch_ips:.3f} goal >= 0.97")
    print(f"ratio {tag}_lightning_data_wait {lightning_wait:.3f} goal < "
          f"{0.05 if device == 'cuda' else 0.10}")


if __name__ == "__main__":
    main()
