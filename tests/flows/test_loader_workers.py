"""Loader workers in a process that has run a flow, as the in-process training task's are."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from prefect import flow, task

from models.datamodule import ShardStream, stream_loader
from models.zoo import get_spec


@task
def one() -> int:
    return 1


@flow
def tiny() -> int:
    return one()


def test_loader_workers_end_cleanly_after_a_flow_ran_in_the_process(prefect_harness, tmp_path):
    """Workers forked from this process would inherit Prefect's services, whose at-exit hooks
    fail in the child: each worker exited with code 1 and the DataLoader raised at epoch end."""
    assert tiny() == 1
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 80, 120)).save(buf, "JPEG")
    pq.write_table(pa.table({
        "content_hash": [f"{i:064x}" for i in range(40)],
        "image": [buf.getvalue()] * 40,
        "label": [json.dumps([i / 1000, 0, 0, 0, 0]) for i in range(40)],
    }), tmp_path / "train-20261120-000.parquet", row_group_size=8)
    stream = ShardStream(tmp_path, "train", get_spec("water-quality"), batch_size=4,
                         shuffle=True).configure(workers=2)
    seen = [round(float(y[0]) * 1000) for _, labels in stream_loader(stream, 2) for y in labels]
    assert sorted(seen) == list(range(40))
