"""Requests that arrive together run as one forward pass.

Each request puts its prepared images and the predictor it started with on the queue. One
consumer takes what is waiting, waits up to ``max_wait_ms`` for more (up to ``max_batch``
images), and runs a forward pass per predictor in the batch on a thread of its own, so the
event loop keeps accepting requests; whatever arrives meanwhile forms the next batch, so
batches grow with load. A request's images are never split across versions.

Background work (a shadow candidate's predictions, :mod:`oceanml.serving.candidates`) waits
on a bounded queue of its own, runs only when no request waits, and only within a budget of
forward time: ``background_share`` of the wall clock (a token bucket, up to ``BURST_S`` saved
while idle). Watching the queue alone was not enough: at full load every batch holds every
request in flight, so the queue empties after each one and a shadow ran after each, taking
the cores from the next batch (the champion's p99 4.5x in ``bench/serve.py``). A shadow thus
adds at most its share to the champion's work, and a request waits behind at most one of its
batches (a quarter of ``max_batch``); what does not fit fills the bounded queue and
is then skipped (``predict_later`` says so) rather than queued without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.predictor import Predictor

BURST_S = 0.25  # forward seconds a shadow may save up while the replica is idle


@dataclass
class Item:
    predictor: Predictor
    images: Any  # (n, 3, H, W) uint8 tensor
    future: asyncio.Future = field(repr=False)
    background: bool = False

    @property
    def n(self) -> int:
        return int(self.images.shape[0])


class Batcher:
    def __init__(self, *, max_batch: int, max_wait_ms: float,
                 on_batch: Callable[[str, int], None] | None = None,
                 background_capacity: int = 64, background_share: float = 0.1) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch or (lambda name, n: None)
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.background: asyncio.Queue[Item] = asyncio.Queue(maxsize=background_capacity)
        self.background_share = background_share
        self._tokens = 0.0  # forward seconds background work may still take
        self._refilled = time.monotonic()
        self._arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._task: asyncio.Task | None = None

    async def predict(self, predictor: Predictor, images: Any) -> np.ndarray:
        """The outputs for ``images`` from ``predictor``, computed in some batch."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Item(predictor, images, future))
        self._arrived.set()
        return await future

    def predict_later(self, predictor: Predictor, images: Any) -> asyncio.Future | None:
        """The future outputs for ``images``, computed when no request waits; None when the
        background queue is full (the work is skipped)."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.background.put_nowait(Item(predictor, images, future, background=True))
        except asyncio.QueueFull:
            return None
        self._arrived.set()
        return future

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.executor.shutdown(wait=True)

    def _budget(self) -> float:
        """Forward seconds background work may take now (negative: owed)."""
        now = time.monotonic()
        self._tokens = min(self._tokens + (now - self._refilled) * self.background_share,
                           BURST_S)
        self._refilled = now
        return self._tokens

    async def _next(self) -> tuple[Item, bool]:
        """The next item, a request's before any background one; True if it is a request's."""
        while True:
            if not self.queue.empty():
                return self.queue.get_nowait(), True
            wait = None
            if not self.background.empty():
                budget = self._budget()
                if budget > 0:
                    return self.background.get_nowait(), False
                wait = -budget / self.background_share + 1e-3  # until it is paid back
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait)

    async def _collect(self) -> list[Item]:
        first, request = await self._next()
        items = [first]
        size = first.n
        if not request:  # background: what waits of it, in a small batch, no waiting for more
            while (size < max(1, self.max_batch // 4) and not self.background.empty()
                   and self.queue.empty()):
                items.append(self.background.get_nowait())
                size += items[-1].n
            return items
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            items.append(item)
            size += item.n
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            groups: dict[int, list[Item]] = {}
            for item in items:
                groups.setdefault(id(item.predictor), []).append(item)
            for group in groups.values():
                await self._forward(loop, group)

    async def _forward(self, loop: asyncio.AbstractEventLoop, group: list[Item]) -> None:
        import torch

        predictor = group[0].predictor
        started = time.monotonic()
        try:
            images = torch.cat([item.images for item in group])
            outputs = await loop.run_in_executor(self.executor, predictor.outputs, images)
        except Exception as exc:  # the request(s) get a 500 naming it; serving goes on
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            if group[0].background:
                self._budget()
                self._tokens -= time.monotonic() - started
        self.on_batch(predictor.name, int(images.shape[0]))
        start = 0
        for item in group:
            if not item.future.done():  # the client may have gone away
                item.future.set_result(outputs[start:start + item.n])
            start += item.n
