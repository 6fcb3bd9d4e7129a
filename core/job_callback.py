"""The Lightning callback that moves a training job while it trains. Apart from
``core.jobs`` because Lightning takes seconds to import, and the nightly, the monitor and every
CLI command read and write jobs without training."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback
from sqlalchemy.orm import sessionmaker

from core.jobs import set_job, start_job


class JobCallback(Callback):
    """Moves a job while Lightning trains: running at the start, epoch and progress after
    each training epoch (and a Prefect progress artifact inside a run). Only the global-zero
    process writes, so a multi-GPU run updates the row once per epoch."""

    def __init__(self, sessions: sessionmaker, job_id: int, model: str) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.model = model
        self.progress: Any = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        from core.progress import StageProgress

        start_job(self.sessions, self.job_id, trainer.max_epochs)
        self.progress = StageProgress(f"train-{self.model}", unit="epoch", bar=False).__enter__()
        if trainer.current_epoch:  # resumed from last.ckpt
            self._report(trainer.current_epoch, trainer.max_epochs)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._report(trainer.current_epoch + 1, trainer.max_epochs)

    def _report(self, epoch: int, total: int) -> None:
        set_job(self.sessions, self.job_id, epoch=epoch, progress=round(epoch / total, 4))
        if self.progress is not None:
            self.progress(epoch, total)
