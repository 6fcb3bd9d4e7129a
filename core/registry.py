"""MLflow tracking and registry through ``MlflowClient`` with explicit run ids.

The fluent API keeps the active run in thread-local state, which collides when Prefect runs
tasks concurrently; every call here names its run, model and version.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from core.settings import Settings

CHAMPION = "champion"
PREVIOUS = "previous-champion"


def tracking_uri(settings: Settings) -> str:
    """The tracking URI without user-info. A user and password written into an http(s) URI
    move to MLflow's own ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` in this process: MLflow
    sends them as basic auth either way, but prints run links built from the URI it was
    given ("View run at ..."), and a password must not reach the logs that way."""
    uri = settings.mlflow_tracking_uri
    parts = urlsplit(uri)
    if not uri.startswith(("http://", "https://")) or "@" not in parts.netloc:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password or "")
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def client(settings: Settings) -> MlflowClient:
    """The process's client for the settings' tracking URI (one per URI, shared by the
    stages: it holds no run state, every call here names its run)."""
    return _client_for(tracking_uri(settings))


@lru_cache(maxsize=8)
def _client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(mlc: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = mlc.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlc.create_experiment(name, artifact_location=artifact_location)


def ensure_registered_model(mlc: MlflowClient, name: str, description: str = "") -> None:
    try:
        mlc.get_registered_model(name)
    except MlflowException:
        mlc.create_registered_model(name, description=description)


def version_by_tag(mlc: MlflowClient, name: str, tag: str, value: str) -> ModelVersion | None:
    """The newest version of ``name`` carrying ``tag=value`` (how training stays idempotent)."""
    found = mlc.search_model_versions(f"name = '{name}' and tags.`{tag}` = '{value}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def alias_version(mlc: MlflowClient, name: str, alias: str = CHAMPION) -> ModelVersion | None:
    try:
        return mlc.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_champion(mlc: MlflowClient, name: str, version: str) -> str | None:
    """Move the ``champion`` alias to ``version`` (the old one keeps ``previous-champion``),
    without the champion history: for a registry that has none (tests, benchmarks). OceanML's
    own changes go through :mod:`core.champion_history`, which the alias follows."""
    old = alias_version(mlc, name)
    old_version = str(old.version) if old else None  # MLflow 3 returns ints; we store strings
    if old_version is not None and old_version != str(version):
        mlc.set_registered_model_alias(name, PREVIOUS, old_version)
    mlc.set_registered_model_alias(name, CHAMPION, str(version))
    return old_version


def load_model(mlc: MlflowClient, name: str, version: str) -> Any:
    """The ``nn.Module`` of one registered version, loaded without touching global MLflow state:
    the files are fetched through ``mlc``'s tracking URI (a server's ``mlflow-artifacts:``
    URIs resolve against it, not against the process-wide default), then loaded from disk."""
    import tempfile

    import mlflow.artifacts
    import mlflow.pytorch

    uri = mlc.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="oceanml-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp,
                                                    tracking_uri=mlc.tracking_uri)
        return mlflow.pytorch.load_model(local, map_location="cpu")


def run_link(mlc: MlflowClient, uri: str, run_id: str, artifacts: str) -> str:
    """Where a run's ``artifacts`` folder is, for a person: a URL when the tracking server is
    one, else the run id and the ``mlflow ui`` command; never with a password."""
    from core.secrets import mask_url

    shown = mask_url(uri)
    if uri.startswith(("http://", "https://")):
        experiment = mlc.get_run(run_id).info.experiment_id
        return f"{shown.rstrip('/')}/#/experiments/{experiment}/runs/{run_id} (artifacts `{artifacts}/`)"
    return f"MLflow run `{run_id}`, artifacts `{artifacts}/` (`mlflow ui --backend-store-uri {shown}`)"
