"""One settings object for every part of OceanML.

Embedded defaults live under ``.oceanml/`` (SQLite, local lake, local MLflow, local DVC
remote, offline ``heuristic`` LLM) so the demo needs no server; every URL can point at a real
server instead through ``OCEANML_*`` environment variables or a ``.env`` file. Building the
object does no I/O: directories are created by the stage that writes into them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.access import ConfiguredKey

#: A run of these deployments still running this long after it started is cancelled by the
#: server (the automation ``oceanml deploy`` creates), so the next scheduled one can start.
RUN_DEADLINES_S = {"nightly": 22 * 3600.0, "monitor": 3 * 3600.0, "retrain": 12 * 3600.0}


def _file_url(path: Path) -> str:
    return path.resolve().as_uri()


class Settings(BaseSettings):
    """Where OceanML reads and writes, and the knobs an operator sets per deployment."""

    model_config = SettingsConfigDict(
        env_prefix="OCEANML_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    home: Path = Field(Path(".oceanml"), description="Root of the embedded default state.")
    project_dir: Path = Field(
        Path("."), description="Root of the DVC project (where dvc.yaml and params.yaml live)."
    )

    db_url: str | None = Field(None, description="SQLAlchemy URL; SQLite under home by default.")
    landing_url: str | None = Field(None, description="fsspec URL where devices drop files.")
    lake_url: str | None = Field(None, description="fsspec URL of the content-addressed lake.")
    mlflow_tracking_uri: str | None = None
    mlflow_artifact_uri: str | None = Field(
        None, description="Artifact root for new MLflow experiments: a local folder by "
        "default, the tracking server's own (proxied) root when the tracking URI is http(s)."
    )
    dvc_remote_url: str | None = Field(None, description="DVC remote (folder or s3:// URL).")
    s3_endpoint_url: str | None = Field(None, description="For S3-compatible stores.")
    s3_timeout_s: float = Field(
        60.0, gt=0, description="An S3 connection or read waiting longer fails (tried twice).")
    dvc_timeout_s: float = Field(
        3600.0, gt=0, description="A DVC command (build, push, pull) running longer is stopped.")

    llm_provider: Literal["heuristic", "openai"] = "heuristic"
    llm_base_url: str | None = None
    llm_model: str = "heuristic-v1"
    llm_api_key: SecretStr | None = None
    llm_vision: bool = Field(False, description="Send images (data URLs) to the model.")
    llm_concurrency: int = Field(8, ge=1, description="Provider calls in flight at once.")
    llm_timeout_s: float = 30.0
    llm_max_retries: int = 4
    llm_max_retry_after_s: float = Field(
        60.0, ge=0, description="A provider's Retry-After is honoured up to this; longer "
                                "ones wait this long, and are counted in the enrich result.")
    llm_max_requests: int | None = Field(None, description="Per-run cap; the rest waits.")
    llm_max_tokens: int | None = Field(None, description="Per-run cap; the rest waits.")
    llm_cost_per_1k_prompt: float = Field(0.0, description="For the cost estimate.")
    llm_cost_per_1k_completion: float = 0.0

    profile: str | None = Field(
        None, description="params.yaml profile runs use when none is asked for (e.g. "
                          "cpu-small on a 2-core machine); unset: the zoo's defaults.")
    experiment_name: str = "oceanml"
    max_image_bytes: int = Field(5_000_000, description="Larger files are rejected.")
    max_image_pixels: int = Field(4096 * 4096, description="Decompression-bomb guard.")
    max_sidecar_bytes: int = Field(64_000, description="Larger sidecars are rejected unread.")
    max_table_bytes: int = Field(256_000_000, description="Larger CSV/Parquet files too.")
    max_clock_skew_s: float = Field(600.0, description="How far in the future a device may be.")
    oldest_observation: datetime = Field(datetime(2000, 1, 1, tzinfo=UTC),
                                         description="Older timestamps are refused.")
    device_registry_url: str | None = Field(
        None, description="fsspec URL of known device ids; unknown devices are refused.")
    ingest_chunk_size: int = Field(500, description="Files per chunk: bounds memory.")
    ingest_workers: int = Field(
        0, ge=0, description="Processes that read and validate files; 0 = one per core (<= 8).")
    fleet_concurrency: int = Field(
        0, ge=0, description="Model branches of a nightly at once, each a process of "
                             "its own; 0: all (in-process trainings still take turns).")
    branch_timeout_s: float = Field(
        20 * 3600.0, gt=0, description="A model branch of a nightly or monitor running longer "
        "is stopped (its process and what it started) and fails by name, so one hung model "
        "cannot hold the night, or the next one.")
    stage_timeouts: dict[str, float] = Field(
        default_factory=dict, description="Seconds per task name, replacing the task's own "
        "timeout, e.g. {\"train\": 7200} (JSON in OCEANML_STAGE_TIMEOUTS).")
    stage_retry_delays: dict[str, float] = Field(
        default_factory=dict, description="Seconds per task name a failed attempt waits "
        "before its retry, replacing the task's own, e.g. {\"train\": 300} for GPU nodes "
        "that take minutes to come back (JSON in OCEANML_STAGE_RETRY_DELAYS).")
    drift_window_days: float = Field(2.0, description="Recent observations compared with ref.")
    run_deadlines_s: dict[str, float] = Field(
        default_factory=lambda: dict(RUN_DEADLINES_S), description="Seconds a run of the "
        "nightly, monitor or retrain deployment may run before the server cancels it, e.g. "
        "{\"monitor\": 3600} (JSON in OCEANML_RUN_DEADLINES_S; the others keep theirs).")

    # Who hears about failed runs, drift, promotions and rollbacks (``oceanml deploy``).
    notify_webhook_url: SecretStr | None = Field(
        None, description="Webhook the server posts each message to (JSON with subject and "
        "text); kept in a Prefect block's secrets, never printed.")
    notify_block: str | None = Field(
        None, description="Or any Prefect notification block, as TYPE-SLUG/NAME "
        "(e.g. slack-webhook/ops).")

    # Where training runs: set per worker (a GPU worker's environment), not in params.yaml,
    # because none of it changes what a training means (it is not part of the training key).
    train_accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu.")
    train_devices: str = Field("auto", description="Lightning devices: auto, 1, 4, or '0,1'.")
    train_strategy: str = Field(
        "auto", description="auto: ddp_spawn when more than one device, else single device.")
    train_num_nodes: int = Field(1, ge=1)
    train_precision: str = Field(
        "auto", description="auto: bf16-mixed where the GPU supports it, else 32-true.")
    train_num_workers: int = Field(
        -1, description="DataLoader worker processes; -1: up to 8 on a GPU, cores/4 on a CPU.")
    train_loader_timeout_s: float = Field(
        600.0, ge=0, description="A training whose DataLoader workers deliver no batch this "
        "long fails (a hung read of its dataset), instead of holding its task; 0: no limit.")
    train_work_pool: str | None = Field(
        None, description="When set, flows train through the train deployment on this pool.")
    train_deployment: str = Field("train/train-gpu", description="flow-name/deployment-name.")
    train_heartbeat_s: float = Field(
        30.0, gt=0, description="A training touches its job this often while it runs.")
    train_heartbeat_timeout_s: float = Field(
        900.0, gt=0, description="A training on the work pool silent this long (its worker "
        "died, or lost the DB) is cancelled and fails its branch.")
    train_start_timeout_s: float = Field(
        3600.0, gt=0, description="A training on the work pool not started while the pool has "
        "had no online worker this long is cancelled and fails its branch.")

    # Batch scoring: in the flow's process, or fanned out as runs of the score deployment.
    score_batch_size: int = Field(128, ge=1, description="Images per forward pass.")
    score_work_pool: str | None = Field(
        None, description="When set, scoring fans partitions out to the score deployment.")
    score_deployment: str = Field("score/score", description="flow-name/deployment-name.")

    # The online endpoint (`oceanml serve`).
    serve_max_batch: int = Field(32, ge=1, description="Images per forward pass at most.")
    serve_max_wait_ms: float = Field(
        5.0, ge=0, description="How long a batch waits for company before it runs.")
    serve_poll_s: float = Field(10.0, gt=0, description="Registry poll for a new champion.")
    serve_shadow_share: float = Field(
        0.1, gt=0, le=1, description="Share of the time a release's shadow may spend in "
        "forward passes (what it cannot fit is skipped and counted).")
    serve_max_images: int = Field(16, ge=1, description="Images one request may carry.")
    serve_log_interval_s: float = Field(
        1.0, gt=0, description="Online predictions are written to the DB this often.")
    serve_body_budget_bytes: int = Field(
        256 * 2**20, ge=2**20, description="Bytes of request bodies a replica holds at once; "
        "past it a request waits OCEANML_SERVE_BODY_WAIT_S, then gets 503 with Retry-After.")
    serve_body_wait_s: float = Field(
        2.0, ge=0, description="How long a request waits for room in the body budget.")
    serve_read_timeout_s: float = Field(
        10.0, gt=0, description="A client's headers, and each part of its body, must arrive "
        "within this (the connection is closed, or 408).")
    serve_body_timeout_s: float = Field(
        120.0, gt=0, description="A request's whole body must arrive within this (408).")
    serve_observations: bool = Field(
        False, description="`oceanml serve` also takes device uploads (POST /v1/observations) "
        "into the landing zone.")
    serve_key_rate: float = Field(
        20.0, gt=0, description="Requests a second one API key may make (per replica), unless "
        "its own --rate says otherwise; past it, 429 with Retry-After.")
    serve_keys_refresh_s: float = Field(
        2.0, gt=0, description="How often a server reads the API keys again: a revoked key is "
        "refused within this.")
    serve_open_metrics: bool = Field(
        False, description="Serve /metrics without a key (for a scraper inside the cluster).")
    api_keys: dict[str, ConfiguredKey] = Field(
        default_factory=dict, description="Keys given without a DB row: a JSON object of name "
        "-> {key_id, hash, scope, device_id, rate}, as `oceanml keys create --print-only` "
        "writes it (hashes only: a Kubernetes secret can hold it).")
    log_format: Literal["text", "json"] = Field(
        "text", description="How `oceanml serve` writes its log lines: text, or JSON lines "
        "for a log aggregator.")

    @field_validator("run_deadlines_s")
    @classmethod
    def _known_deadlines(cls, value: dict[str, float]) -> dict[str, float]:
        if unknown := sorted(set(value) - set(RUN_DEADLINES_S)):
            raise ValueError(f"no deadline for {', '.join(unknown)}: the deployments with "
                             f"one are {', '.join(RUN_DEADLINES_S)}")
        if bad := sorted(k for k, v in value.items() if not v > 0):
            raise ValueError(f"the deadline of {', '.join(bad)} must be positive")
        return {**RUN_DEADLINES_S, **value}

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        home = self.home
        self.db_url = self.db_url or f"sqlite:///{(home / 'oceanml.db').resolve()}"
        self.landing_url = self.landing_url or _file_url(home / "landing")
        self.lake_url = self.lake_url or _file_url(home / "lake")
        self.mlflow_tracking_uri = (
            self.mlflow_tracking_uri or f"sqlite:///{(home / 'mlflow.db').resolve()}"
        )
        if not self.mlflow_artifact_uri and not self.mlflow_tracking_uri.startswith(
                ("http://", "https://")):  # a tracking server has its own artifact root
            self.mlflow_artifact_uri = _file_url(home / "mlartifacts")
        self.dvc_remote_url = self.dvc_remote_url or str((home / "dvc-remote").resolve())
        return self

    @property
    def checkpoint_dir(self) -> Path:
        return (self.home / "checkpoints").resolve()

    @property
    def prefect_home(self) -> Path:
        return (self.home / "prefect").resolve()

    def public_dict(self) -> dict[str, object]:
        """Settings safe to print or log: secrets stay masked, URLs lose their password."""
        from core.secrets import mask_url

        return {k: (str(v) if isinstance(v, SecretStr)
                    else mask_url(v) if isinstance(v, str) and "://" in v else v)
                for k, v in self}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
