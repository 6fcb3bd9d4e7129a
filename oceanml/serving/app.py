"""The FastAPI application ``oceanml serve`` runs.

``POST /v1/models/{name}/predict`` answers an image (or several) with the champion's class
and probabilities, or values, plus the version that answered and the latency;
``GET /v1/models`` lists what is served; ``/health/live``, ``/health/ready`` and ``/metrics``
are for the orchestrator and Prometheus; ``/v1/keys`` manages the API keys. Every route but
the probes needs a key of its scope once a key exists (:mod:`oceanml.serving.auth`), and every
request has an id (:mod:`oceanml.serving.request_ids`). Bad input is a 4xx with
``{"error", "detail"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from core.access import Grant, Scope
from core.database import session_factory
from core.settings import Settings
from models.predictor import Predictor, answers
from oceanml.serving.auth import KeyRing, presented_key
from oceanml.serving.batcher import Batcher
from oceanml.serving.body_budget import BodyBudget
from oceanml.serving.champions import Champions
from oceanml.serving.inputs import BadInput, Limits, open_image
from oceanml.serving.key_routes import key_routes
from oceanml.serving.metrics import Metrics
from oceanml.serving.prediction_log import PredictionLog
from oceanml.serving.reading import declared_size, read_request
from oceanml.serving.request_ids import RequestIds
from tasks.validate import image_rejection

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("oceanml.serve")


class Service:
    """Everything one app serves with: champions, batchers, the prediction log, metrics."""

    def __init__(self, settings: Settings, names: list[str], mlc: MlflowClient,
                 device: str | None = None) -> None:
        self.settings = settings
        self.names = names
        self.metrics = Metrics()
        self.limits = Limits(settings.max_image_bytes, settings.max_image_pixels,
                             settings.serve_max_images)
        self.champions = Champions(mlc, names, poll_s=settings.serve_poll_s, device=device,
                                   on_swap=self._swapped)
        self.batchers: dict[str, Batcher] = {}
        self.sessions = session_factory(settings.db_url)
        self.ring = KeyRing(self.sessions, settings.api_keys,
                            refresh_s=settings.serve_keys_refresh_s,
                            default_rate=settings.serve_key_rate,
                            on_refused=lambda key, why: self.metrics.refused.labels(key, why).inc())
        self.budget = BodyBudget(settings.serve_body_budget_bytes, settings.serve_body_wait_s,
                                 on_change=self.metrics.body_bytes.set)
        self.log = PredictionLog(self.sessions,
                                 interval_s=settings.serve_log_interval_s,
                                 on_written=self.metrics.logged.inc,
                                 on_dropped=self.metrics.dropped.inc)
        self.listener: asyncio.Task | None = None

    def _swapped(self, predictor: Predictor) -> None:
        self.metrics.swapped(predictor.name, predictor.version, predictor.loaded_at)

    async def start(self) -> None:
        await run_in_threadpool(self.ring.start)
        for name in self.names:
            self.batchers[name] = Batcher(
                max_batch=self.settings.serve_max_batch,
                max_wait_ms=self.settings.serve_max_wait_ms,
                on_batch=lambda model, n: self.metrics.batch_size.labels(model).observe(n))
            self.batchers[name].start()
        self.log.start()
        self.champions.start()
        from oceanml.serving.events import listen_for_promotions

        self.listener = listen_for_promotions(self.champions)

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
        self.champions.stop()
        for batcher in self.batchers.values():
            await batcher.stop()
        await run_in_threadpool(self.log.stop)
        await run_in_threadpool(self.ring.stop)

    def needs(self, scope: Scope) -> Any:
        """A route dependency: the caller's key must pass and allow ``scope`` (None when no
        key is required); its name goes in the request's log line."""

        async def admitted(request: Request) -> Grant | None:
            grant = await self.ring.admit(presented_key(request.headers), scope)
            if grant is not None:
                request.state.client = grant.name
            return grant

        return Depends(admitted)

    def prepare(self, predictor: Predictor, images: list[bytes]) -> Any:
        """Check and prepare every image of a request (in a worker thread: PIL decodes)."""
        import torch

        tensors = []
        for n, data in enumerate(images):
            opened = open_image(data, n, self.limits)
            try:
                tensors.append(predictor.prepare(opened))
            except Exception as exc:  # truncated or corrupt past the header
                rejection = image_rejection(exc)
                raise BadInput(422, rejection.reason, f"image {n}: {rejection.detail}") from None
        return torch.stack(tensors)

    def record(self, predictor: Predictor, images: list[bytes],
               answered: list[dict[str, Any]], request_id: str, client: str | None) -> None:
        from tasks.score import prediction_rows

        hashes = [hashlib.sha256(data).hexdigest() for data in images]
        rows = prediction_rows(predictor, [None] * len(images), answered, None,
                               source="online", content_hashes=hashes)
        for row in rows:
            row.update(request_id=request_id, client=client)
        self.log.add(rows)


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
            out.append({"name": name, "champion_version": p.version if p else None,
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
    async with service.budget.hold(declared_size(service, request)) as held:
        parsed = await read_request(service, request, held)
        images = await run_in_threadpool(service.prepare, predictor, parsed.images)
        outputs = await service.batchers[name].predict(predictor, images)
    answered = answers(predictor.spec, outputs)  # once: the answer and its record
    service.record(predictor, parsed.images, answered, request.state.request_id,
                   getattr(request.state, "client", None))
    return {"model": name, "version": predictor.version, "predictions": answered,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


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
