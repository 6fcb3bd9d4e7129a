"""Train: a zoo spec on a dataset version with Lightning, logged and registered in MLflow.

A training is identified by (model, dataset version, params): if the registry already holds a
version with that key, nothing is trained again. Checkpoints live under
``<checkpoint_dir>/<model>/<key>/`` with the MLflow run id beside them, so a killed or retried
run resumes from ``last.ckpt`` into the same MLflow run; once the version is registered they
are removed (the registry holds the weights, and the key is never trained again).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock
from prefect import task
from sqlalchemy import select

from core.database import session_factory
from core.hardware import Hardware
from core.jobs import (
    finish_job,
    heartbeat,
    job_end,
    queue_job,
    reopen_job,
    set_job,
)
from core.lineage import flow_run_id, git_commit
from core.logs import stage_logger
from core.params import DEFAULT_PROFILE, load_file, load_params, model_section, validated
from core.params_schema import TrainSection
from core.records import TrainingRun
from core.registry import client as mlflow_client
from core.registry import (
    ensure_experiment,
    ensure_registered_model,
    tracking_uri,
    version_by_tag,
)
from core.settings import Settings, get_settings
from core.store import sha256_hex
from models.confidence import ATC_TAG
from models.zoo import ModelSpec, get_spec
from tasks.calibrate import calibrate
from tasks.dataset import local_dataset
from tasks.results import TrainingResult
from tasks.trainer import build_data, build_module, build_trainer, stalls_named


class TrainParams(TrainSection):
    """The ``train.<model>`` section of ``params.yaml`` plus run-time overrides."""

    @classmethod
    def load(cls, project_dir: Path, model: str, profile: str | None = None,
             **overrides: Any) -> TrainParams:
        """``train.<model>`` of ``params.yaml`` under ``profile``, then run-time overrides; the
        whole file checked first, an override refused by name like a key of the file."""
        load_file(project_dir, profile)
        section = model_section(load_params(project_dir, profile), "train", model)
        section.update({k: v for k, v in overrides.items() if v is not None})
        return validated(cls, section, f"train.{model}")

    def training_key(self, spec: ModelSpec, dataset_version: str) -> str:
        """What makes two trainings the same: spec, data and the params that change the result."""
        doc = json.dumps([spec.to_dict(), dataset_version, self.model_dump()], sort_keys=True)
        return sha256_hex(doc.encode())[:32]




@dataclass
class TrainOutcome:
    model_version: str
    run_id: str
    training_key: str
    metrics: dict[str, float]
    reused: bool
    artifacts: dict[str, str] = field(default_factory=dict)


def _run_id(mlc, ckpt_dir: Path, experiment_id: str, spec: ModelSpec, tags: dict) -> str:
    """The MLflow run of this training: the one a previous attempt started, or a new one."""
    marker = ckpt_dir / "mlflow_run_id"
    if marker.exists():
        return marker.read_text().strip()
    run = mlc.create_run(experiment_id, run_name=f"{spec.name}-{tags['dataset_version'][:8]}",
                            tags=tags)
    marker.write_text(run.info.run_id)  # train_model created ckpt_dir before taking its lock
    return run.info.run_id


def _log_model(mlc, run_id: str, net: Any, image_size: int) -> None:
    """Store the inference net as an MLflow pytorch model with signature and input example."""
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    example = np.zeros((1, 3, image_size, image_size), dtype=np.float32)
    with torch.no_grad():
        output = net(torch.from_numpy(example)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        mlflow.pytorch.save_model(
            net, path, signature=infer_signature(example, output), input_example=example,
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "oceanml"],
        )
        mlc.log_artifacts(run_id, str(path), "model")


def train_model(
    spec: ModelSpec,
    dataset_dir: Path,
    dataset_version: str,
    params: TrainParams,
    settings: Settings,
    lineage: dict[str, str],
    *,
    progress_bar: bool = False,
    callbacks: list[Any] | None = None,
) -> TrainOutcome:
    """Fit, test, log and register one model version (or reuse the identical one).

    ``callbacks`` are extra Lightning callbacks (progress reporters, fine-tuning schedules).
    """
    mlc = mlflow_client(settings)
    experiment_id = ensure_experiment(mlc, settings.experiment_name, settings.mlflow_artifact_uri)
    ensure_registered_model(mlc, spec.name, f"{spec.task} of {', '.join(spec.outputs)}")
    key = params.training_key(spec, dataset_version)
    ckpt_dir = settings.checkpoint_dir / spec.name / key
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # one trainer per key: a retrain started while the nightly trains the same data waits,
    # then finds the registered version below and reuses it
    with FileLock(ckpt_dir / ".lock"):
        existing = version_by_tag(mlc, spec.name, "training_key", key)
        if existing is not None:
            drop_checkpoints(ckpt_dir)  # left by a training stopped after registering
            metrics = mlc.get_run(existing.run_id).data.metrics
            return TrainOutcome(str(existing.version), existing.run_id, key, dict(metrics),
                                reused=True)
        return _fit_and_register(mlc, spec, dataset_dir, dataset_version, params, settings,
                                 lineage, key, ckpt_dir, experiment_id, progress_bar, callbacks)


def _fit_and_register(
    mlc: Any, spec: ModelSpec, dataset_dir: Path, dataset_version: str, params: TrainParams,
    settings: Settings, lineage: dict[str, str], key: str, ckpt_dir: Path, experiment_id: str,
    progress_bar: bool, callbacks: list[Any] | None,
) -> TrainOutcome:
    """Fit (resuming from ``last.ckpt``), test, log and register; the caller holds the lock."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import MLFlowLogger

    tags = {**lineage, "dataset_version": dataset_version, "training_key": key,
            "model_spec": json.dumps(spec.to_dict())}
    run_id = _run_id(mlc, ckpt_dir, experiment_id, spec, tags)
    L.seed_everything(params.seed, workers=True, verbose=False)
    hardware = Hardware.from_settings(settings)
    module = build_module(spec, params, hardware, dataset_dir)
    data = build_data(spec, params, hardware, dataset_dir)
    logger = MLFlowLogger(experiment_name=settings.experiment_name,
                          tracking_uri=tracking_uri(settings), run_id=run_id)
    trainer, _ = build_trainer(spec, params, hardware, ckpt_dir, logger,
                                        progress_bar=progress_bar, callbacks=callbacks)
    last = ckpt_dir / "last.ckpt"
    with stalls_named(hardware, dataset_dir):
        trainer.fit(module, datamodule=data, ckpt_path=last if last.exists() else None)
        trainer.test(module, datamodule=data, ckpt_path="best", verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    net = module.net.eval().cpu().to(memory_format=torch.contiguous_format)
    calibrated = calibrate(mlc, run_id, net, spec, dataset_dir)
    metrics.update(calibrated)
    if "calibration/atc_threshold" in calibrated:  # the version's, as its temperature is
        tags[ATC_TAG] = repr(calibrated["calibration/atc_threshold"])
    _log_model(mlc, run_id, net, params.image_size)
    mlc.log_dict(run_id, {"spec": spec.to_dict(), "params": params.model_dump()}, "spec.json")
    run = mlc.get_run(run_id)
    version = mlc.create_model_version(
        spec.name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags,
        description=f"trained on dataset {dataset_version} at {lineage.get('git_commit', '?')}",
    )
    mlc.set_terminated(run_id)
    drop_checkpoints(ckpt_dir)
    return TrainOutcome(str(version.version), run_id, key, metrics, reused=False,
                        artifacts={"model": f"models:/{spec.name}/{version.version}"})


def drop_checkpoints(ckpt_dir: Path) -> None:
    """Remove a registered training's checkpoints: they only serve a resume, which its key
    never needs again, and each is the model with its optimizer state (about 130 MB for the
    zoo's classifiers, twice: best and last), left behind by every nightly."""
    for path in ckpt_dir.glob("*.ckpt"):
        path.unlink(missing_ok=True)


def resolve(settings: Settings, model: str, max_epochs: int | None = None,
            backbone: str | None = None, profile: str | None = None
            ) -> tuple[ModelSpec, TrainParams]:
    """The spec and params a training of ``model`` uses: ``params.yaml`` under ``profile``,
    plus overrides."""
    project = settings.project_dir.resolve()
    params = TrainParams.load(project, model, profile, max_epochs=max_epochs,
                              backbone=backbone)
    return get_spec(model, backbone=params.backbone, input_size=params.image_size), params


@task(name="train", retries=1, retry_delay_seconds=30, timeout_seconds=12 * 3600)
def train_task(
    model: str, dataset_version: str, max_epochs: int | None = None, backbone: str | None = None,
    profile: str | None = None, job_id: int | None = None,
) -> TrainingResult:
    """Train (or reuse) a version of ``model`` on ``dataset_version`` and record it; the
    training job ``job_id`` (a new manual one when None) follows it."""
    settings = get_settings()
    sessions = session_factory(settings.db_url)
    if job_id is None:
        job_id = queue_job(sessions, model, dataset_version, "manual", max_epochs,
                           flow_run_id())
    reopen_job(sessions, job_id)  # this attempt may be a retry of a failed one
    try:
        from core.job_callback import JobCallback  # Lightning: seconds to import, here only

        spec, params = resolve(settings, model, max_epochs, backbone, profile)
        set_job(sessions, job_id, max_epochs=params.max_epochs)
        with heartbeat(sessions, job_id, settings.train_heartbeat_s):
            outcome = _train_recorded(settings, sessions, spec, params, dataset_version,
                                      [JobCallback(sessions, job_id, model)],
                                      profile or DEFAULT_PROFILE)
    except BaseException as exc:  # failed, timed out, cancelled by Prefect, interrupted
        finish_job(sessions, job_id, job_end(exc), error=exc)
        raise
    finish_job(sessions, job_id, "completed", model_version=outcome.model_version,
               reused=outcome.reused)
    stage_logger("train").info("train: %s v%s (%s), metrics %s", model, outcome.model_version,
                               "reused" if outcome.reused else "new", outcome.metrics)
    return TrainingResult(outcome.model_version, outcome.run_id, outcome.training_key,
                          outcome.metrics, outcome.reused, job_id, outcome.artifacts)


def _train_recorded(settings: Settings, sessions: Any, spec: ModelSpec, params: TrainParams,
                    dataset_version: str, callbacks: list[Any], profile: str) -> TrainOutcome:
    """Train (or reuse) and add the ``training_runs`` row the first time a key is trained.
    The version's tags carry the profile, so a retrain started by an event trains alike."""
    project = settings.project_dir.resolve()
    data_dir = local_dataset(settings, spec.name, dataset_version)
    lineage = {"git_commit": git_commit(project), "prefect_flow_run_id": flow_run_id() or "",
               "profile": profile}
    outcome = train_model(spec, data_dir, dataset_version, params, settings, lineage,
                          progress_bar=sys.stderr.isatty(), callbacks=callbacks)
    model = spec.name
    with sessions() as session:
        if session.scalar(select(TrainingRun).where(
                TrainingRun.training_key == outcome.training_key)) is None:
            session.add(TrainingRun(
                model_name=model, training_key=outcome.training_key,
                dataset_version=dataset_version, mlflow_run_id=outcome.run_id,
                model_version=outcome.model_version, metrics=outcome.metrics,
                flow_run_id=flow_run_id()))
            session.commit()
    return outcome
