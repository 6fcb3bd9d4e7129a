"""The LightningDataModule over a dataset version's Parquet shards, streamed by worker processes.

A shard's row groups are the units of reading. Each DataLoader worker owns a fixed share of
them (balanced by rows), reads one row group at a time, shuffles through a bounded buffer,
decodes the JPEGs and yields whole batches, so memory holds a few row groups whatever the
dataset's size, and the number of batches is known before the epoch (progress bars,
schedulers). Under DDP every rank gets its own units and the same number of training batches
(a rank with one batch more would hang the others in the gradient all-reduce).
"""

from __future__ import annotations

import json
import multiprocessing
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from core.spawning import spare_children_the_engine
from models.preprocess import decode
from models.zoo import ModelSpec

SPLITS = ("train", "val", "test")


def encode_label(raw: str, spec: ModelSpec) -> torch.Tensor:
    if spec.task == "classification":
        return torch.tensor(spec.outputs.index(raw), dtype=torch.long)
    return torch.tensor(json.loads(raw), dtype=torch.float32)


def read_split(root: Path, split: str, columns: list[str] | None = None) -> dict[str, list]:
    """All rows of one split (its shards in order) as Python lists: for small reads (metadata
    columns of the test split), not for images at training scale."""
    shards = sorted(root.glob(f"{split}-*.parquet"))
    if not shards:
        return {c: [] for c in (columns or ["content_hash", "image", "label"])}
    tables = [pq.read_table(s, columns=columns) for s in shards]
    out: dict[str, list] = {name: [] for name in tables[0].column_names}
    for table in tables:
        for name in out:
            out[name].extend(table.column(name).to_pylist())
    return out


@dataclass(frozen=True)
class Unit:
    """One row group of one shard: what a worker reads at once."""

    shard: Path
    group: int
    rows: int
    start: int = 0  # index of its first row in the split
    stride: int = 1  # keep every stride-th row of the split ...
    offset: int = 0  # ... the ones whose index is offset modulo stride

    def kept(self) -> int:
        return sum(1 for i in range(self.start, self.start + self.rows)
                   if i % self.stride == self.offset)


def split_units(root: Path, split: str) -> list[Unit]:
    units, start = [], 0
    for shard in sorted(root.glob(f"{split}-*.parquet")):
        meta = pq.ParquetFile(shard).metadata
        for g in range(meta.num_row_groups):
            units.append(Unit(shard, g, meta.row_group(g).num_rows, start))
            start += units[-1].rows
    return units


def assign(units: list[Unit], parts: int) -> list[list[Unit]]:
    """Split units into ``parts`` lists of nearly equal rows (largest first, to the lightest),
    each list in the original order; deterministic, so every process computes the same."""
    out: list[list[int]] = [[] for _ in range(parts)]
    load = [0] * parts
    for i in sorted(range(len(units)), key=lambda i: (-units[i].rows, i)):
        lightest = min(range(parts), key=lambda p: (load[p], p))
        out[lightest].append(i)
        load[lightest] += units[i].rows
    return [[units[i] for i in sorted(part)] for part in out]


def batch_counts(rows: list[int], batch_size: int, drop_last: bool, min_last: int = 1
                 ) -> list[int]:
    """Batches from each worker's rows; a last partial batch smaller than ``min_last`` is
    dropped (training drops a batch of one: BatchNorm cannot normalise it)."""
    return [r // batch_size + (0 if drop_last or r % batch_size < min_last else 1) for r in rows]


def worker_plan(units: list[Unit], *, rank: int, world: int, workers: int, batch_size: int,
                equal_ranks: bool) -> list[tuple[list[Unit], int]]:
    """(units, batches) for each worker of ``rank``. With ``equal_ranks`` (training) and more
    than one rank, only full batches are made and every rank makes as many as the poorest.
    Evaluation splits are small: every rank reads all of them and keeps every world-th row, so
    no rank is left without a batch when there are fewer row groups than ranks."""
    if equal_ranks or world == 1:
        per_rank = assign(units, world)
    else:
        per_rank = [[replace(u, stride=world, offset=r) for u in units] for r in range(world)]
    per_worker = [assign(rank_units, workers) for rank_units in per_rank]
    drop_last = equal_ranks and world > 1
    min_last = 2 if equal_ranks else 1
    counts = [batch_counts([sum(u.kept() for u in w) for w in ws], batch_size, drop_last, min_last)
              for ws in per_worker]
    mine = counts[rank]
    if drop_last:
        budget = min(sum(c) for c in counts)
        capped = []
        for count in mine:
            capped.append(min(count, budget))
            budget -= capped[-1]
        mine = capped
    return list(zip(per_worker[rank], mine, strict=True))


def augment(image: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A random flip and quarter turn of a (3, H, W) image: a sea surface seen from above or
    from a buoy has no up or left, so each of the eight is as likely a scene with the same
    labels (and a square image stays square)."""
    if rng.random() < 0.5:
        image = image.flip(-1)
    turns = rng.randrange(4)
    return torch.rot90(image, turns, dims=(1, 2)) if turns else image


class ShardStream(IterableDataset):
    """Batches of (images, labels) streamed from one split's shards.

    ``epoch`` lives in shared memory: persistent workers see the value the trainer sets at
    each epoch start, so every epoch is shuffled differently and resumption is reproducible.
    """

    def __init__(self, root: Path, split: str, spec: ModelSpec, batch_size: int, *,
                 shuffle: bool = False, augment: bool = False, seed: int = 0,
                 buffer_rows: int = 1024) -> None:
        self.units = split_units(Path(root), split)
        self.spec = spec
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.buffer_rows = buffer_rows
        self.rank, self.world, self.workers = 0, 1, 1
        self._epoch = multiprocessing.Value("q", 0, lock=False)

    @property
    def rows(self) -> int:
        return sum(u.rows for u in self.units)

    def configure(self, *, rank: int = 0, world: int = 1, workers: int = 0) -> ShardStream:
        """Where this copy runs: set by the data module once the trainer knows its rank."""
        self.rank, self.world, self.workers = rank, world, max(workers, 1)
        return self

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    def plan(self) -> list[tuple[list[Unit], int]]:
        return worker_plan(self.units, rank=self.rank, world=self.world, workers=self.workers,
                           batch_size=self.batch_size, equal_ranks=self.shuffle)

    def __len__(self) -> int:
        return sum(batches for _, batches in self.plan())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info else 0
        units, batches = self.plan()[worker]
        rng = random.Random(f"{self.seed}/{self._epoch.value}/{self.rank}/{worker}")
        if self.shuffle:
            units = rng.sample(units, len(units))
        rows = self._rows(units, rng)
        for _ in range(batches):
            batch = [row for _, row in zip(range(self.batch_size), rows, strict=False)]
            if not batch:
                return
            yield self._collate(batch, rng)

    def _rows(self, units: list[Unit], rng: random.Random) -> Iterator[tuple[bytes, str]]:
        """Rows of ``units`` in order, or through a shuffle buffer of ``buffer_rows``."""
        buffer: list[tuple[bytes, str]] = []
        for unit in units:
            table = pq.ParquetFile(unit.shard).read_row_group(unit.group, columns=["image", "label"])
            group = ((image, label) for i, (image, label) in enumerate(zip(
                table.column("image").to_pylist(), table.column("label").to_pylist(),
                strict=True), unit.start) if i % unit.stride == unit.offset)
            if not self.shuffle:
                yield from group
                continue
            for row in group:
                if len(buffer) < self.buffer_rows:
                    buffer.append(row)
                    continue
                k = rng.randrange(len(buffer))
                yield buffer[k]
                buffer[k] = row
        rng.shuffle(buffer)
        yield from buffer

    def _collate(self, batch: list[tuple[bytes, str]], rng: random.Random
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        images = []
        for data, _ in batch:
            image = decode(data)
            if self.augment:
                image = augment(image, rng)
            images.append(image)
        labels = torch.stack([encode_label(label, self.spec) for _, label in batch])
        return torch.stack(images), labels  # uint8: OceanNet scales on its own device


def worker_context() -> multiprocessing.context.BaseContext:
    """Loader workers fork from a clean server process, not from the caller.

    A training task's process holds Prefect's services, whose at-exit hooks fail in a forked
    child (Prefect 3.8: every worker then exits with code 1 and the DataLoader raises), and on a
    GPU worker an initialised CUDA context, which must not be forked either. The server
    imports this module once, so a worker starts in milliseconds, not a torch import (nor,
    under a deployment, a Prefect import: :mod:`core.spawning`)."""
    spare_children_the_engine()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def stream_loader(stream: ShardStream, workers: int, *, persistent: bool = False,
                  timeout_s: float = 0.0) -> DataLoader:
    """The DataLoader over a stream: whole batches come from ``workers`` processes.
    ``persistent`` keeps them for the next epoch (the epoch reaches them through shared
    memory, see :class:`ShardStream`). With workers, waiting more than ``timeout_s`` (when
    positive) for a batch raises: a worker stuck in a read never returns on its own."""
    return DataLoader(stream, batch_size=None, num_workers=workers,
                      persistent_workers=persistent and workers > 0,
                      pin_memory=torch.cuda.is_available(),
                      timeout=timeout_s if workers > 0 else 0,
                      multiprocessing_context=worker_context() if workers > 0 else None)


class ShardDataModule(L.LightningDataModule):
    """Train/val/test streams of one dataset version; ``num_workers`` processes decode."""

    def __init__(self, root: str | Path, spec: ModelSpec, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, timeout_s: float = 0.0) -> None:
        super().__init__()
        self.root = Path(root)
        self.spec = spec
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.timeout_s = timeout_s
        self.streams: dict[str, ShardStream] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.streams:
                train = split == "train"
                self.streams[split] = ShardStream(self.root, split, self.spec, self.batch_size,
                                                  shuffle=train, augment=train, seed=self.seed)

    def _loader(self, split: str) -> DataLoader:
        stream = self.streams[split]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        stream.configure(rank=rank, world=world, workers=self.num_workers)
        if trainer is not None and split == "train":
            stream.set_epoch(trainer.current_epoch)  # a resumed run continues the sequence
        return stream_loader(stream, self.num_workers, persistent=True,
                             timeout_s=self.timeout_s)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class ShuffleEachEpoch(L.Callback):
    """Hands the epoch number to the training stream before its workers start reading."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if isinstance(datamodule, ShardDataModule) and "train" in datamodule.streams:
            datamodule.streams["train"].set_epoch(trainer.current_epoch)
