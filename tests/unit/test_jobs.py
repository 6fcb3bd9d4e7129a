"""Training jobs: a row from the moment a training is queued, moved by a Lightning callback
while a real Trainer fits, closed with the error when it fails, listed by ``oceanml jobs``;
and the retrain cool-down, claimed under the model's lock."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
from sqlalchemy import select
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from core.job_callback import JobCallback
from core.jobs import claim_retrain, finish_job, queue_job
from core.records import TrainingJob
from oceanml.cli import app

MODEL = "plastic-detector"
REPO = Path(__file__).resolve().parents[2]


class Tiny(L.LightningModule):
    """A linear model on random data; raises in ``fail_at_epoch`` when given."""

    def __init__(self, fail_at_epoch: int | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.fail_at_epoch = fail_at_epoch

    def training_step(self, batch, _):
        if self.current_epoch == self.fail_at_epoch:
            raise RuntimeError("loss is NaN")
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(module: Tiny, callback: JobCallback, epochs: int = 3) -> None:
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=8)
    L.Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu").fit(module, data)


def job(sessions, job_id: int) -> TrainingJob:
    with sessions() as s:
        return s.get(TrainingJob, job_id)


def test_a_job_is_queued_then_moved_epoch_by_epoch_then_closed(sessions) -> None:
    job_id = queue_job(sessions, MODEL, "ds-1", "nightly", max_epochs=3)
    queued = job(sessions, job_id)
    assert (queued.status, queued.epoch, queued.progress, queued.started_at) == \
        ("queued", 0, 0.0, None)
    fit(Tiny(), JobCallback(sessions, job_id, MODEL))
    trained = job(sessions, job_id)
    assert (trained.status, trained.epoch, trained.max_epochs, trained.progress) == \
        ("running", 3, 3, 1.0)
    assert trained.worker == socket.gethostname() and trained.started_at is not None
    finish_job(sessions, job_id, "completed", model_version="4")
    done = job(sessions, job_id)
    assert (done.status, done.model_version, done.finished_at is not None) == \
        ("completed", "4", True)
    finish_job(sessions, job_id, "failed", error="late")  # an ended job stays as it ended
    assert job(sessions, job_id).status == "completed"


def test_a_failing_fit_leaves_the_epoch_it_reached(sessions) -> None:
    job_id = queue_job(sessions, MODEL, "ds-1", "manual", max_epochs=5)
    with pytest.raises(RuntimeError, match="loss is NaN") as failure:
        fit(Tiny(fail_at_epoch=2), JobCallback(sessions, job_id, MODEL), epochs=5)
    finish_job(sessions, job_id, "failed", error=failure.value)
    failed = job(sessions, job_id)
    assert (failed.status, failed.epoch, failed.progress) == ("failed", 2, 0.4)
    assert failed.error == "RuntimeError: loss is NaN"


def test_the_train_task_closes_its_job_with_the_reason_it_failed(settings, sessions) -> None:
    from tasks.train import train_task

    settings.project_dir.mkdir(parents=True)
    (settings.project_dir / "params.yaml").write_text((REPO / "params.yaml").read_text())
    with pytest.raises(Exception, match="dvc pull"):
        train_task.fn(MODEL, "0123456789abcdef0123456789abcdef", profile="cpu-small")
    with sessions() as s:
        [failed] = s.scalars(select(TrainingJob)).all()
    assert (failed.trigger, failed.status, failed.max_epochs) == ("manual", "failed", 5)
    assert failed.error.startswith("DvcError: dvc pull") and failed.finished_at is not None


def test_a_storm_of_retrains_claims_one_and_the_cooldown_counts_from_it(sessions) -> None:
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda _: claim_retrain(sessions, MODEL, timedelta(hours=6)),
                               range(8)))
    won = [job_id for job_id, _ in claims if job_id is not None]
    assert len(won) == 1
    assert {recent.id for _, recent in claims if recent is not None} == set(won)
    assert claim_retrain(sessions, "algae-bloom", timedelta(hours=6))[0] is not None  # per model
    queue_job(sessions, MODEL, "ds-2", "nightly")  # a nightly training is no retrain
    assert claim_retrain(sessions, MODEL, timedelta(hours=6))[0] is None
    finish_job(sessions, won[0], "failed", error="boom")  # a failed retrain may be retried
    assert claim_retrain(sessions, MODEL, timedelta(hours=6))[0] is not None
    assert claim_retrain(sessions, MODEL, timedelta(0))[0] is not None  # no cool-down


def test_oceanml_jobs_lists_status_epochs_and_errors(sessions) -> None:
    ok = queue_job(sessions, MODEL, "abcdef0123456789", "nightly", max_epochs=5)
    finish_job(sessions, ok, "completed", model_version="2", reused=True)
    bad = queue_job(sessions, "water-quality", None, "retrain", max_epochs=5)
    finish_job(sessions, bad, "failed", error="RuntimeError: CUDA out of memory\nat line 3")
    out = CliRunner().invoke(app, ["jobs"]).output
    lines = out.splitlines()
    assert lines[0].split() == ["id", "model", "trigger", "status", "epoch", "progress",
                                "dataset", "version", "worker", "queued", "finished"]
    assert lines[1].split()[:7] == [str(bad), "water-quality", "retrain", "failed", "0/5",
                                    "0%", "-"]
    assert lines[2] == "    error: RuntimeError: CUDA out of memory"
    assert lines[3].split()[:9] == [str(ok), MODEL, "nightly", "completed", "0/5", "100%",
                                    "abcdef01", "v2", "(reused)"]
    only = CliRunner().invoke(app, ["jobs", "--model", MODEL, "--json"]).output
    assert [j["id"] for j in json.loads(only)] == [ok]


def test_a_retried_attempt_reopens_its_job_and_a_completed_one_stays(sessions) -> None:
    from core.jobs import job_end, reopen_job

    job_id = queue_job(sessions, MODEL, "ds-1", "nightly", max_epochs=3)
    finish_job(sessions, job_id, job_end(TimeoutError("task timed out")), error="timed out")
    assert job(sessions, job_id).status == "failed"  # a timeout fails; a retry may follow
    reopen_job(sessions, job_id)
    reopened = job(sessions, job_id)
    assert (reopened.status, reopened.error, reopened.finished_at) == ("queued", None, None)
    finish_job(sessions, job_id, "completed", model_version="1", reused=True)
    reopen_job(sessions, job_id)
    assert job(sessions, job_id).status == "completed"
    assert job_end(KeyboardInterrupt()) == "cancelled"


def test_an_error_is_stored_without_the_credentials_in_force(sessions, monkeypatch) -> None:
    from core.settings import get_settings

    monkeypatch.setenv("OCEANML_MLFLOW_TRACKING_URI", "https://ml:Sentinel-pw-42@mlflow.example")
    get_settings.cache_clear()
    job_id = queue_job(sessions, MODEL, "ds-1", "nightly")
    finish_job(sessions, job_id, "failed", error=RuntimeError(
        "API request to https://ml:Sentinel-pw-42@mlflow.example/api/2.0 failed"))
    assert job(sessions, job_id).error == ("RuntimeError: API request to https://ml:***@"
                                           "mlflow.example/api/2.0 failed")
