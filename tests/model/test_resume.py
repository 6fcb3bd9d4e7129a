"""Fault test: a training process killed mid-run continues from its checkpoint when run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow
EPOCHS = 3

TRAINER = textwrap.dedent('''
    import json, sys
    import lightning as L
    from pathlib import Path
    from models.zoo import get_spec
    from core.settings import get_settings
    from tasks.train import TrainParams, train_model

    class Report(L.Callback):
        """One JSON line per event, flushed, so the parent can kill us at a known point."""
        def _say(self, **event):
            print(json.dumps(event), flush=True)
        def on_train_start(self, trainer, module):
            self._say(event="start", global_step=trainer.global_step, epoch=trainer.current_epoch)
        def on_train_epoch_end(self, trainer, module):
            self._say(event="epoch_end", epoch=trainer.current_epoch,
                      global_step=trainer.global_step)
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self._say(event="step", global_step=trainer.global_step, epoch=trainer.current_epoch)

    spec = get_spec("plastic-detector", backbone="resnet18", input_size=32)
    params = TrainParams(backbone="resnet18", image_size=32, max_epochs=MAX_EPOCHS, patience=10,
                         batch_size=16, lr=2e-3, weight_decay=1e-4, seed=7)
    out = train_model(spec, Path(sys.argv[1]), "resume-v1", params, get_settings(),
                      {"git_commit": "test"}, callbacks=[Report()])
    print(json.dumps({"event": "done", "version": out.model_version, "run_id": out.run_id,
                      "reused": out.reused}), flush=True)
''').replace("MAX_EPOCHS", str(EPOCHS))


def events(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_a_killed_training_resumes_from_its_checkpoint(settings, dataset, tmp_path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAINER)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(dataset)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    seen: list[str] = []
    epoch_done_step = None
    for line in proc.stdout:  # kill -9 a few steps into the second epoch
        seen.append(line)
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "epoch_end" and event["epoch"] == 0:
            epoch_done_step = event["global_step"]
        if epoch_done_step and event.get("event") == "step" and \
                event["global_step"] >= epoch_done_step + 2:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and epoch_done_step
    first = events(seen)
    assert not any(e["event"] == "done" for e in first)

    again = subprocess.run([sys.executable, str(script), str(dataset)], capture_output=True,
                           text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    second = events(again.stdout.splitlines())
    start = next(e for e in second if e["event"] == "start")
    assert start["global_step"] == epoch_done_step  # goes on from the checkpoint, not from 0
    assert start["epoch"] == 1
    last_epoch = max(e["epoch"] for e in second if e["event"] == "epoch_end")
    assert last_epoch == EPOCHS - 1
    done = next(e for e in second if e["event"] == "done")
    marker = next(settings.checkpoint_dir.glob("plastic-detector/*/mlflow_run_id"))
    assert done["run_id"] == marker.read_text().strip()  # the same MLflow run, continued
    assert done["version"] == "1" and not done["reused"]
    # registered: the weights are in the registry, the key is never trained again
    assert not list(marker.parent.glob("*.ckpt")), list(marker.parent.iterdir())
