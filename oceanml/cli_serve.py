"""``oceanml serve``: the champions over HTTP, locked once a key exists.

Secure by default: with no API key anywhere (no row, nothing in ``OCEANML_API_KEYS``), the
server is open, so it binds loopback only and says so; another address needs a key, or the
operator's explicit ``--insecure`` (logged as a warning).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from core.settings import Settings

SERVE_HELP = """Serve the champion of every model (or those named) over HTTP.

\b
POST /v1/models/NAME/predict  an image as multipart (file parts, optional
                              "readings" JSON field) or as JSON
                              {"image": BASE64} / {"images": LIST}; answers
                              class and probabilities (or values), the
                              version that answered, latency_ms
GET  /v1/models               served models, champion version, loaded at
GET  /health/live             the process answers (no key needed)
GET  /health/ready            every served model has its champion loaded
                              (no key needed)
GET  /metrics                 Prometheus: oceanml_requests_total,
                              oceanml_request_latency_seconds (histogram,
                              by model and status), oceanml_batch_size,
                              oceanml_model_version,
                              oceanml_requests_refused_total (by key)
GET/POST/DELETE /v1/keys      list, create, revoke keys (admin key)
POST /v1/observations         device uploads (with --observations): image
                              and sidecar parts, an ingest key bound to the
                              sidecar's device; 202 accepted, 200 already
                              received, 4xx with the ingestion reason

\b
Once a key exists (`oceanml keys create NAME --scope predict`), every route
but the probes needs one: `Authorization: Bearer KEY` or `X-API-Key: KEY`;
none or unknown is 401, the wrong scope 403, past the key's rate 429 with
Retry-After. With no key, the server binds loopback only (--insecure to
bind another address open). Each request's id (X-Request-ID, given or
made) is in the response, the log line and the prediction rows.

\b
p50/p95/p99 come from the latency histogram. In Prometheus, p99 per model
over five minutes:
  histogram_quantile(0.99, sum by (le, model)
    (rate(oceanml_request_latency_seconds_bucket[5m])))
(0.5 and 0.95 for p50 and p95).

\b
The server follows the registry: a new champion is loaded beside the old
one and swapped in without failing a request (poll: OCEANML_SERVE_POLL_S;
at once on oceanml.model.promoted when PREFECT_API_URL is set).
"""

log = logging.getLogger("oceanml.serve")


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8080,
    models: Annotated[list[str] | None, typer.Option(
        "--models", help="Models to serve (repeat the option); default: every zoo model "
                         "that has a champion now.")] = None,
    max_batch: Annotated[int | None, typer.Option(
        help="Images per forward pass at most (OCEANML_SERVE_MAX_BATCH).")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(
        help="How long a batch waits for company (OCEANML_SERVE_MAX_WAIT_MS).")] = None,
    poll_s: Annotated[float | None, typer.Option(
        help="Registry poll interval (OCEANML_SERVE_POLL_S).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: best).")] = None,
    observations: Annotated[bool, typer.Option(
        "--observations", help="Also take device uploads: POST /v1/observations "
                               "(OCEANML_SERVE_OBSERVATIONS).")] = False,
    only_observations: Annotated[bool, typer.Option(
        "--only-observations", help="Take device uploads and serve no model.")] = False,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Bind an address other than loopback with no API key: anyone who "
                           "reaches it may call it.")] = False,
) -> None:
    import uvicorn

    from core.logs import log_to_stderr
    from core.registry import client as mlflow_client
    from core.settings import get_settings
    from oceanml.serving.app import create_app, server_config

    overrides = {"serve_max_batch": max_batch, "serve_max_wait_ms": max_wait_ms,
                 "serve_poll_s": poll_s,
                 "serve_observations": True if observations or only_observations else None}
    settings = get_settings().model_copy(
        update={k: v for k, v in overrides.items() if v is not None})
    log_to_stderr("oceanml.serve", settings.log_format)
    open_door(settings, host, insecure)
    mlc = mlflow_client(settings)
    names = [] if only_observations else served_models(mlc, models)
    what = [*names, *(["device uploads"] if settings.serve_observations else [])]
    typer.echo(f"serving {', '.join(what)} on http://{host}:{port} (docs at /docs)")
    app = create_app(settings, names, mlc, device)
    uvicorn.Server(server_config(app, settings, host, port, log_level="info")).run()


def open_door(settings: Settings, host: str, insecure: bool) -> None:
    """Refuse to serve open beyond loopback unless told to; say when the server is open."""
    from core.database import session_factory
    from core.keys import grants

    if grants(session_factory(settings.db_url), settings.api_keys):
        return
    if is_loopback(host):
        typer.echo("no API key exists: serving without authentication, on loopback only "
                   "(`oceanml keys create NAME --scope predict` locks it within "
                   f"{settings.serve_keys_refresh_s:g} s)")
    elif insecure:
        log.warning("--insecure: serving %s without authentication: anyone who reaches it "
                    "may call it", host)
    else:
        typer.echo(f"error: no API key exists, and {host} is not loopback: create one "
                   "(`oceanml keys create NAME --scope predict`), or pass --insecure to serve "
                   "it open", err=True)
        raise typer.Exit(2)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: only "localhost" is known to stay on the machine
        return False


def served_models(mlc: MlflowClient, models: list[str] | None) -> list[str]:
    """The models named (checked against the zoo), else those with a champion now."""
    from core.registry import alias_version
    from models.zoo import ZOO

    names = [m for n in (models or []) for m in n.split(",") if m]
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {', '.join(unknown)}; the zoo has "
                                 f"{', '.join(ZOO)}")
    if not names:
        names = [n for n in ZOO if alias_version(mlc, n) is not None]
        if not names:
            raise typer.BadParameter("no model has a champion yet: run `oceanml run nightly`, "
                                     "or name models with --models to wait for theirs")
    return names
