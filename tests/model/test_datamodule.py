"""The shard stream: every row once per epoch, with workers and ranks, in bounded batches.

Every row's label carries its id, so a test sees exactly which rows an epoch yielded and
compares them with the split, row for row: a lost or repeated row fails, with no allowance.
The only rows the stream may leave out are the ones its contract names: in training, a
worker's last row when it would make a batch of one (BatchNorm cannot normalise a batch of
one), and under DDP training whatever does not fit the equal number of full batches that
every rank makes.
"""

from __future__ import annotations

import io
import json
from itertools import combinations
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from models.datamodule import ShardStream, read_split, split_units, stream_loader, worker_plan
from models.zoo import get_spec

pytestmark = pytest.mark.filterwarnings(  # 3 workers on a 2-core runner: slow, not wrong
    "ignore:This DataLoader will create:UserWarning")
SPEC = get_spec("water-quality")  # regression: the label can carry the row's id
# shards of uneven size, cut into row groups of 16: every group holds an even number of rows
SHARD_ROWS = (100, 38, 64, 2, 82)
ROWS = sum(SHARD_ROWS)


def jpeg() -> bytes:
    """A tiny valid JPEG: decoding is real, the pixels do not matter here."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 80, 120)).save(buf, "JPEG")
    return buf.getvalue()


def write_shard(path: Path, ids: range, row_group_size: int = 16) -> None:
    """One Parquet shard as the dataset build writes it, the row's id in its label."""
    pq.write_table(pa.table({
        "content_hash": [f"{i:064x}" for i in ids],
        "image": [jpeg()] * len(ids),
        "label": [json.dumps([i / 1000, 0, 0, 0, 0]) for i in ids],
    }), path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five train shards of uneven size (row groups of 16), ids 0..ROWS-1 in the labels."""
    root = tmp_path_factory.mktemp("shards")
    start = 0
    for n, rows in enumerate(SHARD_ROWS):
        write_shard(root / f"train-2026112{n}-000.parquet", range(start, start + rows))
        start += rows
    return root


def ids_of(batches) -> list[int]:
    """The row ids an iteration yielded, in order."""
    return [round(float(y[0]) * 1000) for _, labels in batches for y in labels]


def epoch(stream: ShardStream, workers: int, n: int = 0) -> list:
    """One epoch through a real DataLoader with ``workers`` processes."""
    stream.configure(workers=workers).set_epoch(n)
    return list(stream_loader(stream, workers))


def test_the_fixture_admits_no_lone_last_row(shards) -> None:
    """Row groups of even size and even batch sizes: no worker's share of them can leave a
    single row over, so a training epoch here must yield every row (see the module doc)."""
    units = split_units(shards, "train")
    assert sum(u.rows for u in units) == ROWS
    assert all(u.rows % 2 == 0 for u in units)
    labels = read_split(shards, "train")["label"]
    assert [round(json.loads(label)[0] * 1000) for label in labels] == list(range(ROWS))


@pytest.mark.parametrize("buffer_rows", [24, 1024])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_each_training_row_is_seen_exactly_once_per_epoch_and_len_is_exact(
        shards, workers, buffer_rows) -> None:
    """Shuffled, through worker processes that persist across epochs (as in training), the
    rows of each epoch are the split's rows, each exactly once: through a shuffle buffer
    smaller than a worker's share (rows pass through it) and one that holds all of it."""
    stream = ShardStream(shards, "train", SPEC, batch_size=10, shuffle=True,
                         buffer_rows=buffer_rows)
    stream.configure(workers=workers)
    loader = stream_loader(stream, workers, persistent=True)
    for n in range(2):
        stream.set_epoch(n)
        batches = list(loader)
        assert len(batches) == len(stream)
        assert sorted(ids_of(batches)) == list(range(ROWS))
        assert all(images.shape == (len(labels), 3, 8, 8) for images, labels in batches)
        assert all(images.dtype == torch.uint8 for images, _ in batches)  # a quarter of float32
        assert all(2 <= len(labels) <= 10 for _, labels in batches)


@pytest.mark.parametrize("workers", [0, 2])
def test_training_leaves_out_only_a_lone_last_row(tmp_path, workers) -> None:
    """21 rows in one row group, batches of 10: training makes two batches and drops the
    21st row (a batch of one); evaluation keeps it. Nothing else is lost or repeated."""
    write_shard(tmp_path / "train-20261120-000.parquet", range(21), row_group_size=32)
    train = ShardStream(tmp_path, "train", SPEC, batch_size=10, shuffle=True)
    batches = epoch(train, workers)
    seen = ids_of(batches)
    assert [len(labels) for _, labels in batches] == [10, 10] and len(train) == 2
    assert len(set(seen)) == 20 and set(seen) < set(range(21))
    evaluation = ShardStream(tmp_path, "train", SPEC, batch_size=10)
    batches = epoch(evaluation, workers)
    assert [len(labels) for _, labels in batches] == [10, 10, 1] and len(evaluation) == 3
    assert ids_of(batches) == list(range(21))


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


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_evaluation_reads_every_row_once(shards, workers) -> None:
    """Evaluation keeps every row, a last partial batch included; with one reader the rows
    come in shard order, with several each one's in order."""
    stream = ShardStream(shards, "train", SPEC, batch_size=32)
    batches = epoch(stream, workers)
    seen = ids_of(batches)
    assert len(batches) == len(stream)
    assert sorted(seen) == list(range(ROWS))
    if workers <= 1:
        assert seen == list(range(ROWS))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_ranks_read_disjoint_rows_and_make_the_same_number_of_full_training_batches(
        shards, world, workers) -> None:
    """Under DDP training each rank reads its own row groups and makes as many full batches
    as the poorest rank can: the ranks never share a row, and what is left out is exactly
    the rows that do not fit those batches, none more."""
    batch = 8
    per_rank, own_rows, full = [], [], []
    for rank in range(world):
        stream = ShardStream(shards, "train", SPEC, batch_size=batch, shuffle=True)
        stream.configure(rank=rank, world=world, workers=workers)
        batches = list(stream_loader(stream, workers))
        assert len(batches) == len(stream)
        assert all(len(labels) == batch for _, labels in batches)  # only full batches
        per_rank.append(ids_of(batches))
        shares = [sum(u.rows for u in units) for units, _ in stream.plan()]
        own_rows.append({i for units, _ in stream.plan() for u in units
                         for i in range(u.start, u.start + u.rows)})
        full.append(sum(rows // batch for rows in shares))
    budget = min(full)
    assert budget > 0
    for rank, ids in enumerate(per_rank):
        assert len(ids) == len(set(ids)) == budget * batch  # no repeats, none short
        assert set(ids) <= own_rows[rank]  # only the rank's own row groups
    for a, b in combinations(range(world), 2):
        assert not set(per_rank[a]) & set(per_rank[b]), (a, b)
        assert not own_rows[a] & own_rows[b], (a, b)
    assert set().union(*own_rows) == set(range(ROWS))  # every row group has a rank


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_evaluation_under_ddp_splits_every_row_among_the_ranks(shards, world, workers) -> None:
    """Evaluation under DDP: rank r keeps the rows whose index is r modulo the world size,
    so the ranks are disjoint and together read the whole split, each row once."""
    seen = []
    for rank in range(world):
        stream = ShardStream(shards, "train", SPEC, batch_size=8)
        stream.configure(rank=rank, world=world, workers=workers)
        batches = list(stream_loader(stream, workers))
        assert len(batches) == len(stream)
        seen.append(sorted(ids_of(batches)))
        assert seen[-1] == list(range(rank, ROWS, world))
    assert sorted(i for ids in seen for i in ids) == list(range(ROWS))


def test_the_plan_balances_rows_across_workers(shards) -> None:
    units = split_units(shards, "train")
    assert len(units) > 10  # row groups, not shards, are the unit
    plan = worker_plan(units, rank=0, world=1, workers=4, batch_size=16, equal_ranks=False)
    rows = [sum(u.rows for u in part) for part, _ in plan]
    assert sum(rows) == ROWS and max(rows) - min(rows) <= 16


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



def test_augmentation_gives_each_of_the_eight_flips_and_turns_and_nothing_else() -> None:
    import random

    from models.datamodule import augment

    image = torch.arange(3 * 4 * 4, dtype=torch.uint8).reshape(3, 4, 4)
    views = {tuple(v.rot90(k, dims=(1, 2)).flatten().tolist())
             for v in (image, image.flip(-1)) for k in range(4)}
    assert len(views) == 8
    rng = random.Random(0)
    seen = {tuple(augment(image, rng).flatten().tolist()) for _ in range(400)}
    assert seen == views  # every one of them, and only those (the labels stay true)
