"""The FastAPI application ``oceanml serve`` runs.

``POST /v1/models/{name}/predict`` answers an image (or several) with the champion's class
and probabilities, or values, plus the version that answered, its role (the champion, or a
release's canary) and the latency;
``GET /v1/models`` lists what is served; ``/health/live``, ``/health/ready`` and ``/metrics``
are for the orchestrator and Prometheus; ``/v1/keys`` manages the API keys. Every route but
the probes needs a key of its scope once a key exists (:mod:`oceanml.serving.auth`), and every
request has an id (:mod:`oceanml.serving.request_ids`). Bad input is a 4xx with
``{"error", "detail"}``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from core.access import Scope
from core.settings import Settings
from models.predictor import answers
from oceanml.serving.inputs import BadInput
from oceanml.serving.key_routes import key_routes
from oceanml.serving.reading import declared_size, read_request
from oceanml.serving.request_ids import RequestIds
from oceanml.serving.service import Service

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("oceanml.serve")


def create_app(settings: Settings, names: list[str], mlc: MlflowClient,
               device: str | None = None) -> FastAPI:
    """The app serving the champions of ``names`` (models load in the background at start),
    and the device upload route when ``OCEANML_SERVE_OBSERVATIONS`` is on."""
    service = Service(settings, names, mlc, device)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="OceanML", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="The champions of the OceanML fleet, answering images now.")
    app.state.service = service
    app.add_middleware(RequestIds)
    app.include_router(key_routes(service))
    if settings.serve_observations:
        from oceanml.serving.observations import observation_routes

        app.include_router(observation_routes(service))
    predict_scope = service.needs(Scope.predict)

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.post("/v1/models/{name}/predict", dependencies=[predict_scope])
    async def predict(name: str, request: Request) -> JSONResponse:
        started = time.perf_counter()
        status = 200
        try:
            body = await answer(service, name, request, started)
            return JSONResponse(body)
        except BadInput as exc:
            status = exc.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            model = name if name in service.names else "unknown"
            service.metrics.requests.labels(model, str(status)).inc()
            service.metrics.latency.labels(model, str(status)).observe(
                time.perf_counter() - started)

    @app.get("/v1/models", dependencies=[predict_scope])
    async def models() -> dict[str, Any]:
        out = []
        for name in service.names:
            p = service.champions.get(name)
            live = service.candidates.get(name)
            out.append({"name": name, "champion_version": p.version if p else None,
                        "release": {"id": live.release_id, "mode": live.mode,
                                    "share": live.share,
                                    "candidate_version": live.predictor.version}
                        if live else None,
                        "loaded_at": _iso(p.loaded_at) if p else None,
                        "task": p.spec.task if p else None,
                        "outputs": list(p.spec.outputs) if p else None,
                        "input_size": p.spec.input_size if p else None,
                        "device": p.device if p else None,
                        "error": service.champions.errors.get(name)})
        return {"models": out}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        missing = {n: service.champions.errors.get(n, "loading")
                   for n in service.names if service.champions.get(n) is None}
        if missing:
            return JSONResponse({"status": "not ready", "missing": missing}, status_code=503)
        return JSONResponse({"status": "ready"})

    metrics_scope = [] if service.settings.serve_open_metrics else [predict_scope]

    # the API's own description behind a key too (FastAPI's are open): a browser sends no
    # bearer header, so with keys the schema is read with curl or a client, not /docs
    @app.get("/openapi.json", include_in_schema=False, dependencies=[predict_scope])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[predict_scope])
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="OceanML")

    @app.get("/metrics", dependencies=metrics_scope)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app


async def answer(service: Service, name: str, request: Request, started: float
                 ) -> dict[str, Any]:
    """Read, check, batch, answer and record one prediction request, its body held against
    the replica's budget until it is answered."""
    if name not in service.names:
        raise BadInput(404, "unknown_model",
                       f"{name!r} is not served here; served: {', '.join(service.names)}")
    predictor = service.champions.get(name)
    if predictor is None:
        raise BadInput(503, "not_loaded", f"{name} has no champion loaded yet: "
                       f"{service.champions.errors.get(name, 'loading')}")
    champion, role = predictor, "champion"
    async with service.budget.hold(declared_size(service, request)) as held:
        parsed = await read_request(service, request, held)
        hashes = [hashlib.sha256(data).hexdigest() for data in parsed.images]
        live = service.candidates.get(name)
        taking_part = live is not None and live.takes(
            getattr(request.state, "client", None), hashes)
        if taking_part and live.mode == "canary":
            predictor, role = live.predictor, "canary"
        images = await run_in_threadpool(service.prepare, predictor, parsed.images)
        try:
            outputs = await service.batchers[name].predict(predictor, images)
        except Exception as exc:  # the 500 goes out; the version's failure is on record
            service.record(predictor, hashes, [{}] * len(hashes), request, role,
                           time.perf_counter() - started, error=type(exc).__name__)
            raise
    answered = answers(predictor.spec, outputs)  # once: the answer and its record
    latency_s = time.perf_counter() - started
    service.record(predictor, hashes, answered, request, role, latency_s)
    if taking_part and live.mode == "shadow":
        service.shadow(live, champion, images, parsed.images, hashes, request)
    return {"model": name, "version": predictor.version, "role": role,
            "predictions": answered, "latency_ms": round(latency_s * 1000, 3)}


def server_config(app: FastAPI, settings: Settings, host: str, port: int,
                  **options: Any) -> Any:
    """uvicorn's configuration for ``app``: headers must arrive within
    ``OCEANML_SERVE_READ_TIMEOUT_S`` (:mod:`oceanml.serving.slow_clients`)."""
    import uvicorn

    from oceanml.serving.slow_clients import header_deadline

    return uvicorn.Config(app, host=host, port=port, access_log=False,
                          http=header_deadline(settings.serve_read_timeout_s), **options)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
