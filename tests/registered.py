"""Registered model versions for tests, made the way the train stage makes them (run, pickled
``OceanNet`` artifact with signature, ``model_spec`` and lineage tags) without training."""

from __future__ import annotations

import json

import torch
from torch import nn

from core.registry import ensure_experiment, ensure_registered_model
from models.net import OceanNet
from models.zoo import ModelSpec, get_spec
from tasks.train import _log_model

SPEC = get_spec("plastic-detector")


def conv_net(seed: int, spec: ModelSpec = SPEC) -> nn.Module:
    """A small untrained CNN whose answers depend on the image (a seed per version)."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten())
    return OceanNet(backbone, 8, spec.num_outputs, spec.task).eval()


def register(mlc, settings, net: nn.Module, key: str, *, spec: ModelSpec = SPEC,
             size: int = 32) -> str:
    """Register ``net`` as a new version of ``spec.name`` trained at ``size`` px."""
    experiment = ensure_experiment(mlc, settings.experiment_name, settings.mlflow_artifact_uri)
    ensure_registered_model(mlc, spec.name)
    tags = {"git_commit": "abc123", "prefect_flow_run_id": "", "dataset_version": "ds-1",
            "training_key": key,
            "model_spec": json.dumps(spec.with_overrides(input_size=size).to_dict())}
    run = mlc.create_run(experiment, tags=tags)
    _log_model(mlc, run.info.run_id, net, size)
    version = mlc.create_model_version(spec.name, source=f"{run.info.artifact_uri}/model",
                                       run_id=run.info.run_id, tags=tags)
    mlc.set_terminated(run.info.run_id)
    return str(version.version)


class Failing(nn.Module):
    """A backbone step that raises on about one image in ten (chosen by the image itself, so
    the same image always fails; never on a blank one, the warm-up's): a version that breaks
    on some live inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(float(img.std()) > 0 and int(float(img.sum()) * 97) % 10 == 0 for img in x):
            raise RuntimeError("this version cannot answer this image")
        return x


class Slow(nn.Module):
    """A backbone step that takes ``seconds`` more per forward pass: a slower version."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(self.seconds)
        return x


def with_step(net: nn.Module, step: nn.Module) -> nn.Module:
    """``net`` with ``step`` run first in its backbone."""
    net.backbone = nn.Sequential(step, *net.backbone)
    return net


def colour_net(spec: ModelSpec = SPEC) -> nn.Module:
    """A classifier that answers by the image's mean colour (red, green, blue: classes 0, 1,
    2): what it answers moves exactly when the kind of image sent moves."""
    backbone = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net = OceanNet(backbone, 3, spec.num_outputs, spec.task)
    with torch.no_grad():
        net.head.weight.copy_(torch.eye(spec.num_outputs, 3) * 10.0)
        net.head.bias.zero_()
    return net.eval()
