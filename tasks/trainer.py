"""How a training is assembled: the LightningModule (backbone, head, a regressor's target
statistics), the data module over the shards, and the ``Trainer`` with its checkpoints and
early stopping. The train task runs exactly these, and ``bench/train.py`` times them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.hardware import Hardware
from core.params_schema import TrainSection
from core.spawning import spare_children_the_engine
from models.zoo import ModelSpec
from tasks.baselines import split_targets

LOG_EVERY_N_STEPS = 5  # train/loss points per epoch in MLflow, not one per step


def build_module(spec: ModelSpec, params: TrainSection, hardware: Hardware, dataset_dir: Path
                 ) -> Any:
    """The LightningModule of ``spec``: its backbone (local weights if given) and head, and
    for a regressor the train split's target statistics it standardises with."""
    from models.backbones import build_backbone
    from models.module import OceanModule

    backbone, feature_dim = build_backbone(spec.backbone, params.weights)
    return OceanModule(backbone, feature_dim, spec.task, spec.num_outputs, lr=params.lr,
                       weight_decay=params.weight_decay, max_epochs=params.max_epochs,
                       channels_last=hardware.gpu, **target_stats(spec, dataset_dir))


def target_stats(spec: ModelSpec, dataset_dir: Path) -> dict[str, list[float]]:
    """Each regression target's train-split mean and standard deviation (nothing for a
    classifier): one loss over targets of very different spread would learn the widest only."""
    if spec.task != "regression":
        return {}
    values = split_targets(spec, dataset_dir)
    if len(values) == 0:
        raise ValueError(f"{spec.name}: the train split of {dataset_dir} is empty")
    return {"target_mean": values.mean(axis=0).tolist(), "target_std": values.std(axis=0).tolist()}


def build_data(spec: ModelSpec, params: TrainSection, hardware: Hardware, dataset_dir: Path
               ) -> Any:
    """The data module over a dataset version's shards, decoded by the loader workers."""
    from models.datamodule import ShardDataModule

    return ShardDataModule(dataset_dir, spec, params.batch_size, hardware.loader_workers(),
                           params.seed, hardware.loader_timeout_s)


class LoaderStalled(RuntimeError):
    """The loader workers delivered no batch within ``OCEANML_TRAIN_LOADER_TIMEOUT_S``."""


@contextmanager
def stalls_named(hardware: Hardware, dataset_dir: Path) -> Iterator[None]:
    """Torch's bare "DataLoader timed out" as :class:`LoaderStalled`, saying which setting
    bounded the wait and what the workers were reading: the message a branch fails with."""
    try:
        yield
    except RuntimeError as exc:
        if not str(exc).startswith("DataLoader timed out"):
            raise
        raise LoaderStalled(
            f"the data loader delivered no batch for {hardware.loader_timeout_s:.0f} s "
            f"(OCEANML_TRAIN_LOADER_TIMEOUT_S): a worker is stuck, most likely reading "
            f"{dataset_dir}") from exc


def build_trainer(spec: ModelSpec, params: TrainSection, hardware: Hardware, ckpt_dir: Path,
                  logger: Any, *, progress_bar: bool = False,
                  callbacks: list[Any] | None = None) -> tuple[Any, Any]:
    """The ``Trainer`` a training runs under, and its checkpoint callback.

    Validation every epoch, ``best`` and ``last`` checkpoints in ``ckpt_dir``, early stopping
    on the spec's monitored metric (the one the promotion gate reads too), the epoch handed to
    the shard stream, and ``logger`` (MLflow in the task). ``bench/train.py`` times exactly this.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from models.datamodule import ShuffleEachEpoch

    spare_children_the_engine()  # ddp_spawn's ranks and the loader workers start from here
    monitor, mode = spec.monitor
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode,
                                 save_last=True)
    trainer = L.Trainer(
        max_epochs=params.max_epochs,
        **hardware.trainer_kwargs(),
        logger=logger,
        callbacks=[checkpoint, EarlyStopping(monitor=monitor, mode=mode, patience=params.patience),
                   ShuffleEachEpoch(), *(callbacks or [])],
        default_root_dir=ckpt_dir,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        log_every_n_steps=LOG_EVERY_N_STEPS,
    )
    return trainer, checkpoint
