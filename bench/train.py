"""Lightning ``fit`` against a hand-written PyTorch loop: same net, shards, batch size and steps.

Both read the same Parquet shards through the same ``ShardStream``/``DataLoader``, use the
same optimiser, update the same train metrics and count only steady-state steps (after
``--warmup``). Data wait is the time from the end of one step to the start of the next, the
batch fetched and moved to the device: where Lightning's ``on_train_batch_start`` fires.
Prints ``figure`` and ``ratio`` lines. On a GPU: ``--backbone resnet50 --size 224``
(bf16 autocast and channels_last, as the training task uses).

    .venv/bin/python bench/train.py            # resnet18, 64 px, 120 steps, CPU
    .venv/bin/python bench/train.py --quick    # 30 steps
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


def make_shards(root: Path, size: int, observations: int) -> Path:
    """Simulated, ingested and sharded observations: the data the training task reads."""
    os.environ["OCEANML_HOME"] = str(root / "home")
    from oceanml.db import session_factory
    from oceanml.settings import get_settings
    from oceanml.simulator import simulate, write_landing
    from oceanml.store import filesystem
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
    write_manifest(select_manifest(sessions, "plastic-detector").frame, root / "manifest.csv")
    build(root / "manifest.csv", root / "shards", DatasetParams("plastic-detector", size), settings)
    return root / "shards"


class Clock:
    """Step and data-wait timings after the warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.steps = 0
        self.wait = 0.0
        self.start = 0.0
        self.last_end: float | None = None

    def batch_start(self) -> None:
        now = time.perf_counter()
        if self.steps == self.warmup:
            self.start = now
        elif self.steps > self.warmup and self.last_end is not None:
            self.wait += now - self.last_end

    def batch_end(self) -> None:
        self.steps += 1
        self.last_end = time.perf_counter()

    def result(self, batch_size: int) -> tuple[float, float]:
        measured = self.steps - self.warmup
        seconds = self.last_end - self.start
        return measured * batch_size / seconds, self.wait / seconds


def build_net(backbone: str, device: str):
    import torch

    from models.backbones import build_backbone
    from models.net import OceanNet

    torch.manual_seed(0)
    net, features = build_backbone(backbone)
    model = OceanNet(net, features, 3, "classification").to(device)
    return model.to(memory_format=torch.channels_last) if device == "cuda" else model


def loader(shards: Path, batch_size: int, workers: int):
    """The training task's stream of the train split: batches made in the workers."""
    from models.datamodule import ShardStream, stream_loader
    from models.zoo import get_spec

    stream = ShardStream(shards, "train", get_spec("plastic-detector"), batch_size,
                         shuffle=True, augment=True).configure(workers=workers)
    return stream_loader(stream, workers, persistent=True)


def run_torch(shards: Path, args, device: str) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    from models.module import _metrics

    net = build_net(args.backbone, device).train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    metrics = _metrics("classification", 3, "train/").to(device)  # the module tracks these too
    clock = Clock(args.warmup)
    data = loader(shards, args.batch_size, args.workers)
    total = args.steps + args.warmup
    epoch = 0
    while clock.steps < total:
        data.dataset.set_epoch(epoch)
        epoch += 1
        it = iter(data)
        while clock.steps < total:
            try:
                images, labels = next(it)  # waiting for data counts as wait, as in Lightning
            except StopIteration:
                break
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            clock.batch_start()
            if device == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = net(images)
                loss = F.cross_entropy(logits, labels)
            metrics.update(logits.argmax(dim=1), labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if device == "cuda":
                torch.cuda.synchronize()
            clock.batch_end()
    return clock.result(args.batch_size)


def run_lightning(shards: Path, args, device: str) -> tuple[float, float]:
    import lightning as L

    from models.backbones import build_backbone
    from models.module import OceanModule

    class Timing(L.Callback):
        def __init__(self) -> None:
            self.clock = Clock(args.warmup)

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.clock.batch_start()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if device == "cuda":
                import torch

                torch.cuda.synchronize()
            self.clock.batch_end()

    import torch

    torch.manual_seed(0)
    net, features = build_backbone(args.backbone)
    module = OceanModule(net, features, "classification", 3, lr=2e-3, weight_decay=1e-4,
                         channels_last=device == "cuda")  # as the training task sets it
    timing = Timing()
    trainer = L.Trainer(
        max_steps=args.steps + args.warmup, accelerator="gpu" if device == "cuda" else "cpu",
        devices=1, precision="bf16-mixed" if device == "cuda" else "32-true",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[timing],
    )
    trainer.fit(module, train_dataloaders=loader(shards, args.batch_size, args.workers))
    return timing.clock.result(args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--observations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, choices=(1, 2), default=2,
                        help="2: torch-lightning then lightning-torch, best of each")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.observations, args.repeats = 30, 800, 1
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="oceanml-bench-train-") as tmp:
        shards = make_shards(Path(tmp), args.size, args.observations)
        # alternate the order and keep each side's best run: the second run of a pair is
        # otherwise favoured or penalised by caches and clocks
        runs = {"torch": [], "lightning": []}
        for order in (("torch", "lightning"), ("lightning", "torch"))[: args.repeats]:
            for name in order:
                fn = run_torch if name == "torch" else run_lightning
                runs[name].append(fn(shards, args, device))
        torch_ips, torch_wait = max(runs["torch"])
        lightning_ips, lightning_wait = max(runs["lightning"])
    tag = f"{args.backbone}_{args.size}px_{device}"
    print(f"figure {tag}_torch_images_per_s {torch_ips:.1f} images/s")
    print(f"figure {tag}_lightning_images_per_s {lightning_ips:.1f} images/s")
    print(f"figure {tag}_torch_data_wait_share {torch_wait:.3f} share")
    print(f"figure {tag}_lightning_data_wait_share {lightning_wait:.3f} share")
    print(f"ratio {tag}_lightning_vs_torch {lightning_ips / torch_ips:.3f} goal >= 0.97")
    print(f"ratio {tag}_lightning_data_wait {lightning_wait:.3f} goal < "
          f"{0.05 if device == 'cuda' else 0.10}")


if __name__ == "__main__":
    main()
