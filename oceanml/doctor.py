"""``oceanml doctor``: is every configured backend reachable, and if not, which setting to change.

Each check is a function of the settings returning a :class:`Check`; :func:`run_checks` runs
them all (one failing never stops the others) and the CLI prints them and exits non-zero when
a required one failed. Nothing printed carries a password (:func:`core.secrets.mask_url`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from core.secrets import known_secrets, mask_url, scrub
from core.settings import Settings

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""  # what to change when it is not ok
    required: bool = True


def check_database(settings: Settings) -> Check:
    from sqlalchemy import text

    from core.database import make_engine
    from core.schema import current, head

    where = mask_url(settings.db_url)
    try:
        engine = make_engine(settings.db_url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            at = current(connection)
    except Exception as exc:
        return Check("database", False, f"{where}: {_short(exc)}",
                     "set OCEANML_DB_URL (a SQLAlchemy URL; the server must be up)")
    want = head()
    state = ("schema at head " + want if at == want else
             f"schema {at or 'not created yet'}, head {want}: the next run migrates it")
    return Check("database", True, f"{where}: {state}")


def check_location(name: str, url: str, setting: str, settings: Settings) -> Check:
    from core.store import filesystem

    try:
        location = filesystem(url, settings)
        exists = location.fs.exists(location.root)
    except Exception as exc:
        return Check(name, False, f"{mask_url(url)}: {_short(exc)}",
                     f"set {setting} (and OCEANML_S3_ENDPOINT_URL / AWS_* for S3)")
    if not exists and "://" in url and not url.startswith("file://"):
        return Check(name, False, f"{mask_url(url)}: does not exist", f"create it, or set {setting}")
    return Check(name, True, mask_url(url) + ("" if exists else " (created on first write)"))


def check_landing(settings: Settings) -> Check:
    return check_location("landing", settings.landing_url, "OCEANML_LANDING_URL", settings)


def check_lake(settings: Settings) -> Check:
    return check_location("lake", settings.lake_url, "OCEANML_LAKE_URL", settings)


def check_dvc_remote(settings: Settings) -> Check:
    url = settings.dvc_remote_url
    if "://" not in url:
        url = f"file://{os.path.abspath(url)}"
    return check_location("dvc remote", url, "OCEANML_DVC_REMOTE_URL", settings)


def check_mlflow(settings: Settings) -> Check:
    from core.registry import client

    where = mask_url(settings.mlflow_tracking_uri)
    try:
        with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                  MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(TIMEOUT_S))):
            models = client(settings).search_registered_models(max_results=10)
    except Exception as exc:
        if _refused(exc):
            return Check("mlflow", False, f"{where}: the server refused the credentials",
                         "put the user and password in OCEANML_MLFLOW_TRACKING_URI "
                         "(http://USER:PASSWORD@host:5000) or set MLFLOW_TRACKING_USERNAME "
                         "and MLFLOW_TRACKING_PASSWORD")
        return Check("mlflow", False, f"{where}: {_short(exc)}",
                     "set OCEANML_MLFLOW_TRACKING_URI (the tracking server must be up)")
    return Check("mlflow", True, f"{where}: {len(models)} registered models")


def _refused(exc: Exception) -> bool:
    """An MLflow error for a 401 or 403 (MLflow raises them as text, with the status)."""
    text = str(exc)
    return any(words in text for words in ("code 401", "code 403", "Unauthorized",
                                           "Permission denied"))


def check_prefect(settings: Settings) -> Check:
    api = prefect_api_url()
    if not api:
        return Check("prefect", True, "no PREFECT_API_URL: flows run on an ephemeral API "
                     "(deployments, schedules and triggers need a server)", required=False)
    import httpx

    pools = {"oceanml-process", *(p for p in (settings.train_work_pool,
                                              settings.score_work_pool) if p)}
    try:
        prefect_api("GET", api, "/health")
        answer = prefect_api("POST", api, "/work_pools/filter")
    except httpx.HTTPError as exc:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
            return Check("prefect", False, f"{mask_url(api)}: the server refused the "
                         f"credentials (HTTP {exc.response.status_code})",
                         "set PREFECT_API_AUTH_STRING to the server's "
                         "PREFECT_SERVER_API_AUTH_STRING (or PREFECT_API_KEY for Prefect Cloud)")
        return Check("prefect", False, f"{mask_url(api)}: {_short(exc)}",
                     "set PREFECT_API_URL (the server must be up)")
    missing = sorted(pools - {p["name"] for p in answer.json()})
    if missing:
        return Check("prefect", False, f"{mask_url(api)}: no work pool {', '.join(missing)}",
                     "prefect work-pool create NAME --type process (see prefect.yaml)")
    return Check("prefect", True, f"{mask_url(api)}: work pools {', '.join(sorted(pools))}")


def check_notifications(settings: Settings) -> Check:
    """Whether anyone hears about failed runs, drift and promotions (never prints the URL)."""
    fix = "set OCEANML_NOTIFY_WEBHOOK_URL (or OCEANML_NOTIFY_BLOCK), then oceanml deploy"
    if not (settings.notify_webhook_url or settings.notify_block):
        return Check("notify", False, "no OCEANML_NOTIFY_WEBHOOK_URL or OCEANML_NOTIFY_BLOCK: "
                     "failed runs, drift, promotions and rollbacks notify nobody", fix,
                     required=False)
    where = "a webhook" if settings.notify_webhook_url else f"block {settings.notify_block}"
    api = prefect_api_url()
    if not api:
        return Check("notify", False, f"{where}, but no PREFECT_API_URL: the server's "
                     "automations send the messages", "set PREFECT_API_URL", required=False)
    import httpx

    from oceanml.automations import PREFIX

    try:
        answer = prefect_api("POST", api, "/automations/filter")
    except httpx.HTTPError as exc:
        return Check("notify", False, f"{mask_url(api)}: {_short(exc)}",
                     "set PREFECT_API_URL (the server must be up)", required=False)
    ours = [a["name"] for a in answer.json() if a["name"].startswith(PREFIX)]
    if not any("deadline" not in name for name in ours):
        return Check("notify", False, f"{where} set, but the server has no message "
                     "automation of OceanML's", "oceanml deploy --automations-only",
                     required=False)
    return Check("notify", True, f"{where}: {len(ours)} automations on {mask_url(api)}")


def prefect_api(method: str, api: str, path: str):
    """``path`` of the Prefect API at ``api`` (a filter is POSTed empty), with the
    credentials Prefect's own client sends (``PREFECT_API_AUTH_STRING`` for a server with
    basic auth, else ``PREFECT_API_KEY``); raises on an error status."""
    import httpx

    answer = httpx.request(method, f"{api}{path}", json={} if method == "POST" else None,
                           timeout=TIMEOUT_S, headers=prefect_auth_headers())
    answer.raise_for_status()
    return answer


def prefect_auth_headers() -> dict[str, str]:
    """The ``Authorization`` header Prefect's client would send, from the environment or the
    active profile (the auth string wins, as in the client)."""
    import base64

    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    auth, key = PREFECT_API_AUTH_STRING.value(), PREFECT_API_KEY.value()
    if auth:
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    return {"Authorization": f"Bearer {key}"} if key else {}


def prefect_api_url() -> str | None:
    """The Prefect API the flows would use: ``PREFECT_API_URL``, from the environment or the
    active Prefect profile; None for the ephemeral API."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"].rstrip("/")
    from prefect.settings import PREFECT_API_URL

    value = PREFECT_API_URL.value()
    return value.rstrip("/") if value else None


def check_llm(settings: Settings) -> Check:
    if settings.llm_provider == "heuristic":
        return Check("llm", True, "heuristic tagger (offline, no endpoint)")
    import httpx

    base = (settings.llm_base_url or "").rstrip("/")
    if not base:
        return Check("llm", False, "openai provider without an endpoint",
                     "set OCEANML_LLM_BASE_URL")
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    try:
        answer = httpx.get(f"{base}/models", timeout=TIMEOUT_S,
                           headers={"Authorization": f"Bearer {key}"} if key else {})
    except httpx.HTTPError as exc:
        return Check("llm", False, f"{mask_url(base)}: {_short(exc)}", "set OCEANML_LLM_BASE_URL")
    if answer.status_code in (401, 403):
        return Check("llm", False, f"{mask_url(base)}: the key was refused "
                     f"(HTTP {answer.status_code})", "set OCEANML_LLM_API_KEY")
    return Check("llm", True, f"{mask_url(base)}: answers (HTTP {answer.status_code}), model "
                 f"{settings.llm_model}")


def check_gpu(settings: Settings) -> Check:
    import torch

    if not torch.cuda.is_available():
        return Check("gpu", True, "none: training and scoring run on the CPU (the cpu-small "
                     "profile fits it)", required=False)
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Check("gpu", True, ", ".join(names), required=False)


CHECKS: tuple[Callable[[Settings], Check], ...] = (
    check_database, check_landing, check_lake, check_dvc_remote, check_mlflow, check_prefect,
    check_notifications, check_llm, check_gpu,
)


def run_checks(settings: Settings) -> list[Check]:
    """Every check; one that raises is reported as failed, never stops the others. Details
    are scrubbed of every credential in force (an error may quote a URL whole)."""
    secrets = known_secrets(settings)
    results = []
    for check in CHECKS:
        try:
            result = check(settings)
        except Exception as exc:  # a bug in a check must not hide the other answers
            result = Check(check.__name__.removeprefix("check_"), False, _short(exc))
        results.append(Check(result.name, result.ok, scrub(result.detail, secrets),
                             result.fix, result.required))
    return results


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:300]


class _env:  # noqa: N801 - a context manager used as a function
    """Environment variables set for the duration of a block."""

    def __init__(self, **values: str) -> None:
        self.values, self.saved = values, {}

    def __enter__(self) -> None:
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc: object) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
