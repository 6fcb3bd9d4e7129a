"""The LightningDataModule over a dataset version's Parquet shards."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from models.zoo import ModelSpec


def encode_label(raw: str, spec: ModelSpec) -> torch.Tensor:
    if spec.task == "classification":
        return torch.tensor(spec.outputs.index(raw), dtype=torch.long)
    return torch.tensor(json.loads(raw), dtype=torch.float32)


def read_split(root: Path, split: str, columns: list[str] | None = None) -> dict[str, list]:
    """All rows of one split (its shards in order) as Python lists."""
    shards = sorted(root.glob(f"{split}-*.parquet"))
    if not shards:
        return {c: [] for c in (columns or ["content_hash", "image", "label"])}
    tables = [pq.read_table(s, columns=columns) for s in shards]
    out: dict[str, list] = {name: [] for name in tables[0].column_names}
    for table in tables:
        for name in out:
            out[name].extend(table.column(name).to_pylist())
    return out


class ShardDataset(Dataset):
    """Decodes JPEG bytes on access, so memory holds compressed images only."""

    def __init__(self, root: Path, split: str, spec: ModelSpec, augment: bool = False) -> None:
        rows = read_split(root, split, ["content_hash", "image", "label"])
        self.images: list[bytes] = rows["image"]
        self.labels = [encode_label(label, spec) for label in rows["label"]]
        self.content_hashes: list[str] = rows["content_hash"]
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = torch.frombuffer(bytearray(self.images[index]), dtype=torch.uint8)
        image = decode_jpeg(data, mode=ImageReadMode.RGB).float().div_(255.0)
        if self.augment and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.labels[index]


class ShardDataModule(L.LightningDataModule):
    def __init__(
        self, root: str | Path, spec: ModelSpec, batch_size: int = 64, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.spec = spec
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, ShardDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self.datasets:
                self.datasets[split] = ShardDataset(self.root, split, self.spec, split == "train")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
