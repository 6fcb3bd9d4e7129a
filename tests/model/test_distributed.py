"""Multi-device training through the settings: two CPU processes under DDP, as two GPUs would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from models.datamodule import ShardStream
from models.zoo import get_spec

pytestmark = pytest.mark.slow
EPOCHS = 2
BATCH = 16

TRAINER = textwrap.dedent('''
    import json, sys
    import lightning as L
    from pathlib import Path
    from models.zoo import get_spec
    from oceanml.settings import get_settings
    from tasks.train import TrainParams, train_model

    class Report(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            print(json.dumps({"event": "epoch_end", "rank": trainer.global_rank,
                              "world": trainer.world_size, "strategy": type(trainer.strategy).__name__,
                              "global_step": trainer.global_step,
                              "batches": trainer.num_training_batches}), flush=True)

    if __name__ == "__main__":  # ddp_spawn re-imports this file in its children
        spec = get_spec("plastic-detector", backbone="resnet18", input_size=32)
        params = TrainParams(backbone="resnet18", image_size=32, max_epochs=EPOCHS,
                             patience=10, batch_size=BATCH)
        out = train_model(spec, Path(sys.argv[1]), "ddp-v1", params, get_settings(),
                          {"git_commit": "test"}, callbacks=[Report()])
        print(json.dumps({"event": "done", "version": out.model_version,
                          "metrics": out.metrics}), flush=True)
''').replace("EPOCHS", str(EPOCHS)).replace("BATCH", str(BATCH))


def test_two_devices_train_under_ddp_with_equal_batches_per_rank(settings, dataset, tmp_path):
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
    single = len(ShardStream(dataset, "train", get_spec("plastic-detector"), BATCH))
    per_rank = {e["batches"] for e in epochs}
    assert len(per_rank) == 1 and 0 < per_rank.pop() <= single // 2
    final = max(e["global_step"] for e in epochs)
    assert final == EPOCHS * next(e["batches"] for e in epochs)  # no rank stopped early
    done = next(e for e in events if e["event"] == "done")
    assert done["version"] == "1" and "test/macro_f1" in done["metrics"]
