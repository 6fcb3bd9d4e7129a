"""What one replica serves with (:class:`Service`): champions and release candidates, a
batcher per model, the key ring, the body budget, the prediction log and the metrics; and
how an answer is prepared, recorded and shadowed. The routes are in :mod:`.app`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from core.access import Grant, Scope
from core.database import session_factory
from core.settings import Settings
from models.predictor import Predictor, answers
from oceanml.serving.auth import KeyRing, presented_key
from oceanml.serving.batcher import Batcher
from oceanml.serving.body_budget import BodyBudget
from oceanml.serving.candidates import Candidates, Live
from oceanml.serving.champions import Champions
from oceanml.serving.inputs import BadInput, Limits, open_image
from oceanml.serving.metrics import Metrics
from oceanml.serving.prediction_log import PredictionLog
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
        self.candidates = Candidates(self.sessions, mlc, names, poll_s=settings.serve_poll_s,
                                     device=device)
        self.shadows: set[asyncio.Task] = set()  # in flight, held so none is collected
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
                on_batch=lambda model, n: self.metrics.batch_size.labels(model).observe(n),
                background_share=self.settings.serve_shadow_share)
            self.batchers[name].start()
        self.log.start()
        self.champions.start()
        self.candidates.start()
        from oceanml.serving.events import listen_for_changes

        self.listener = listen_for_changes(self.champions, self.candidates)

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
        for task in list(self.shadows):  # off the response path: not waited for
            task.cancel()
        self.champions.stop()
        self.candidates.stop()
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

    def record(self, predictor: Predictor, hashes: list[str], answered: list[dict[str, Any]],
               request: Request, role: str, latency_s: float, error: str | None = None) -> None:
        """The answer (or the failure to give one) to the prediction log and the metrics."""
        from tasks.score import prediction_rows

        rows = prediction_rows(predictor, [None] * len(hashes), answered, None,
                               source="online", content_hashes=hashes)
        for row in rows:
            row.update(request_id=request.state.request_id,
                       client=getattr(request.state, "client", None), role=role,
                       latency_ms=round(latency_s * 1000, 3), error=error)
        self.log.add(rows)
        self.metrics.answered(predictor.name, predictor.version, role,
                              "error" if error else "ok", latency_s)

    def shadow(self, live: Live, champion: Predictor, images: Any, raw: list[bytes],
               hashes: list[str], request: Request) -> None:
        """The release's candidate predicts the same images when the replica is idle; its
        answer is recorded as ``shadow`` under the same request id, never returned."""
        task = asyncio.get_running_loop().create_task(
            self._shadow(live.predictor, champion, images, raw, hashes, request))
        self.shadows.add(task)
        task.add_done_callback(self.shadows.discard)

    async def _shadow(self, candidate: Predictor, champion: Predictor, images: Any,
                      raw: list[bytes], hashes: list[str], request: Request) -> None:
        started = time.perf_counter()
        try:
            if candidate.spec.input_size != champion.spec.input_size:
                images = await run_in_threadpool(self.prepare, candidate, raw)
            future = self.batchers[candidate.name].predict_later(candidate, images)
            if future is None:
                self.metrics.shadow_skipped.labels(candidate.name).inc()
                return
            outputs = await future
        except Exception as exc:  # recorded against the candidate; the caller has its answer
            log.warning("shadow %s v%s failed on request %s: %s", candidate.name,
                        candidate.version, request.state.request_id, exc)
            self.record(candidate, hashes, [{}] * len(hashes), request, "shadow",
                        time.perf_counter() - started, error=type(exc).__name__)
            return
        self.record(candidate, hashes, answers(candidate.spec, outputs), request, "shadow",
                    time.perf_counter() - started)
