"""Multi-device training through the settings: two CPU processes under DDP, as two GPUs would.

Each rank reports the rows it trained on, identified by their decoded image (every simulated
image differs: noise), so the test checks the real run, not a plan: ranks share no row, no
row repeats within an epoch, and every rank makes the same number of full batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from models.datamodule import ShardStream, read_split
from models.zoo import get_spec

pytestmark = pytest.mark.slow
EPOCHS = 2
BATCH = 16

TRAINER = textwrap.dedent('''
    import hashlib, json, sys
    import lightning as L
    from pathlib import Path
    from models.zoo import get_spec
    from core.settings import get_settings
    from tasks.train import TrainParams, train_model

    def row_key(image):  # the row behind an image, however augmentation flipped or turned it
        views = [v.rot90(k, dims=(1, 2)) for v in (image, image.flip(-1)) for k in range(4)]
        return min(hashlib.sha1(v.contiguous().numpy().tobytes()).hexdigest() for v in views)

    class Report(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.rows = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.rows.extend(row_key(image) for image in batch[0])

        def on_train_epoch_end(self, trainer, module):
            print(json.dumps({"event": "epoch_end", "rank": trainer.global_rank,
                              "world": trainer.world_size, "strategy": type(trainer.strategy).__name__,
                              "epoch": trainer.current_epoch, "global_step": trainer.global_step,
                              "batches": trainer.num_training_batches, "rows": self.rows}),
                  flush=True)

    if __name__ == "__main__":  # ddp_spawn re-imports this file in its children
        spec = get_spec("plastic-detector", backbone="resnet18", input_size=32)
        params = TrainParams(backbone="resnet18", image_size=32, max_epochs=EPOCHS,
                             patience=10, batch_size=BATCH, lr=2e-3, weight_decay=1e-4, seed=7)
        out = train_model(spec, Path(sys.argv[1]), "ddp-v1", params, get_settings(),
                          {"git_commit": "test"}, callbacks=[Report()])
        print(json.dumps({"event": "done", "version": out.model_version,
                          "metrics": out.metrics}), flush=True)
''').replace("EPOCHS", str(EPOCHS)).replace("BATCH", str(BATCH))


def row_key(image: torch.Tensor) -> str:
    """The test's copy of the trainer script's key: one per row, whichever of the eight flips
    and quarter turns augmentation gave it."""
    views = [v.rot90(k, dims=(1, 2)) for v in (image, image.flip(-1)) for k in range(4)]
    return min(hashlib.sha1(v.contiguous().numpy().tobytes()).hexdigest() for v in views)


def split_keys(dataset) -> list[str]:
    """The train split's rows as the stream decodes them."""
    return [row_key(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                mode=ImageReadMode.RGB))
            for data in read_split(dataset, "train", ["image"])["image"]]


def test_two_devices_train_under_ddp_with_equal_batches_per_rank(settings, dataset, tmp_path):
    """Two ranks through the real Trainer: each reads its own rows (a rank given the other's
    share, or the whole split, would overlap), only full batches, as many as the poorer
    rank's share allows, and the same count on both (an extra batch hangs the all-reduce)."""
    script = tmp_path / "train.py"
    script.write_text(TRAINER)
    env = {**os.environ, "OCEANML_TRAIN_ACCELERATOR": "cpu", "OCEANML_TRAIN_DEVICES": "2",
           "OCEANML_TRAIN_NUM_WORKERS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, str(script), str(dataset)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e["event"] == "epoch_end"]
    assert {e["rank"] for e in epochs} == {0, 1}
    assert {e["strategy"] for e in epochs} == {"DDPStrategy"} and {e["world"] for e in epochs} == {2}
    per_rank = {e["batches"] for e in epochs}
    assert len(per_rank) == 1
    batches = per_rank.pop()
    spec = get_spec("plastic-detector")
    planned = [len(ShardStream(dataset, "train", spec, BATCH, shuffle=True)
                   .configure(rank=rank, world=2, workers=1)) for rank in (0, 1)]
    assert planned == [batches, batches] and batches > 0
    final = max(e["global_step"] for e in epochs)
    assert final == EPOCHS * batches  # no rank stopped early
    split = split_keys(dataset)
    assert len(set(split)) == len(split)  # the keys identify rows
    for n in range(EPOCHS):
        rows = {e["rank"]: e["rows"] for e in epochs if e["epoch"] == n}
        assert set(rows) == {0, 1}
        for keys in rows.values():
            assert len(keys) == len(set(keys)) == batches * BATCH  # full batches, no repeat
            assert set(keys) <= set(split)
        shared = set(rows[0]) & set(rows[1])
        assert not shared, f"epoch {n}: {len(shared)} rows trained on by both ranks"
    done = next(e for e in events if e["event"] == "done")
    assert done["version"] == "1" and "test/macro_f1" in done["metrics"]
