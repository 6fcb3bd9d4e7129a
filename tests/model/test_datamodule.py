"""The shard stream: every row once per epoch, with workers and ranks, in bounded batches."""

import io
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from models.datamodule import ShardStream, read_split, split_units, stream_loader, worker_plan
from models.zoo import get_spec

SPEC = get_spec("water-quality")  # regression: the label can carry the row's id


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 80, 120)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Five train shards of uneven size (row groups of 16), ids 0..N-1 in the labels."""
    root = tmp_path_factory.mktemp("shards")
    image, next_id = jpeg(), 0
    for n, rows in enumerate((100, 37, 64, 1, 81)):
        ids = range(next_id, next_id + rows)
        next_id += rows
        pq.write_table(pa.table({
            "content_hash": [f"{i:064x}" for i in ids],
            "image": [image] * rows,
            "label": [json.dumps([i / 1000, 0, 0, 0, 0]) for i in ids],
        }), root / f"train-2026112{n}-000.parquet", row_group_size=16)
    return root


def ids_of(batches) -> list[int]:
    return [round(float(y[0]) * 1000) for _, labels in batches for y in labels]


def epoch(stream: ShardStream, workers: int, n: int = 0) -> list:
    stream.configure(workers=workers).set_epoch(n)
    return list(stream_loader(stream, workers))


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_each_training_row_is_seen_once_per_epoch_and_len_is_exact(shards, workers) -> None:
    stream = ShardStream(shards, "train", SPEC, batch_size=10, shuffle=True)
    batches = epoch(stream, workers)
    assert len(batches) == len(stream)
    seen = Counter(ids_of(batches))
    assert max(seen.values()) == 1
    assert len(seen) >= stream.rows - max(workers, 1)  # at most a batch of one per worker left
    assert all(images.shape == (len(labels), 3, 8, 8) for images, labels in batches)
    assert all(images.dtype == torch.uint8 for images, _ in batches)  # a quarter of float32
    assert all(2 <= len(labels) <= 10 for _, labels in batches)


def test_epochs_are_shuffled_differently_and_reproducibly(shards) -> None:
    stream = ShardStream(shards, "train", SPEC, batch_size=10, shuffle=True, seed=3)
    first, second = ids_of(epoch(stream, 2, 0)), ids_of(epoch(stream, 2, 1))
    assert first != second and sorted(first) != first
    assert ids_of(epoch(stream, 2, 0)) == first
    # persistent workers keep their copy of the stream: the epoch still reaches them
    loader = stream_loader(stream, 2, persistent=True)
    stream.set_epoch(0)
    assert ids_of(loader) == first
    stream.set_epoch(1)
    assert ids_of(loader) == second


def test_evaluation_reads_every_row_in_shard_order(shards) -> None:
    stream = ShardStream(shards, "train", SPEC, batch_size=32)
    expected = [round(json.loads(label)[0] * 1000) for label in read_split(shards, "train")["label"]]
    assert ids_of(stream) == expected == list(range(len(expected)))


@pytest.mark.parametrize(("world", "workers"), [(2, 1), (2, 3), (3, 2)])
def test_ranks_read_disjoint_rows_and_make_the_same_number_of_training_batches(
        shards, world, workers) -> None:
    per_rank = []
    for rank in range(world):
        stream = ShardStream(shards, "train", SPEC, batch_size=8, shuffle=True)
        stream.configure(rank=rank, world=world, workers=workers)
        batches = list(stream_loader(stream, workers))
        assert len(batches) == len(stream)
        assert all(len(labels) == 8 for _, labels in batches)  # only full batches under DDP
        per_rank.append(ids_of(batches))
    assert len({len(ids) for ids in per_rank}) == 1
    assert not set(per_rank[0]) & set(per_rank[1])


def test_the_plan_balances_rows_across_workers(shards) -> None:
    units = split_units(shards, "train")
    assert len(units) > 10  # row groups, not shards, are the unit
    plan = worker_plan(units, rank=0, world=1, workers=4, batch_size=16, equal_ranks=False)
    rows = [sum(u.rows for u in part) for part, _ in plan]
    assert sum(rows) == 283 and max(rows) - min(rows) <= 16


def test_evaluation_under_ddp_gives_every_rank_rows_even_with_one_row_group(tmp_path) -> None:
    pq.write_table(pa.table({"content_hash": ["a", "b", "c"], "image": [jpeg()] * 3,
                             "label": [json.dumps([i / 1000, 0, 0, 0, 0]) for i in range(3)]}),
                   tmp_path / "val-20261120-000.parquet")
    seen = []
    for rank in range(2):
        stream = ShardStream(tmp_path, "val", SPEC, 8).configure(rank=rank, world=2)
        batches = list(stream)
        assert len(batches) == len(stream) == 1
        seen.append(ids_of(batches))
    assert seen == [[0, 2], [1]]
