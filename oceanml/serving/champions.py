"""The champion of each served model, loaded, and kept current as the registry moves.

A poller thread reads each model's ``champion`` alias every ``poll_s`` (any MLflow backend
answers that) and sooner when :meth:`Champions.wake` is called (the ``oceanml.model.promoted``
event). A new version is loaded and warmed up beside the old one, then swapped in with one
assignment: a request holds the predictor it started with, so none fails or waits for a
load, and each answer names the version that produced it. A failed load keeps the old one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.registry import alias_version
from models.predictor import Predictor, load_predictor

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("oceanml.serve")


class Champions:
    """The loaded predictor per model name; read with :meth:`get`, never locked on read."""

    def __init__(self, mlc: MlflowClient, names: list[str], *, poll_s: float,
                 device: str | None = None,
                 on_swap: Callable[[Predictor], None] | None = None) -> None:
        self.mlc = mlc
        self.names = list(names)
        self.poll_s = poll_s
        self.device = device
        self.on_swap = on_swap
        self.loaded: dict[str, Predictor] = {}
        self.errors: dict[str, str] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, name: str) -> Predictor | None:
        return self.loaded.get(name)

    def ready(self) -> bool:
        return all(name in self.loaded for name in self.names)

    def refresh(self, name: str) -> bool:
        """Load ``name``'s champion if it is not the one loaded; True when it swapped."""
        champion = alias_version(self.mlc, name)
        if champion is None:
            self.errors[name] = "no champion in the registry yet"
            return False
        version = str(champion.version)
        current = self.loaded.get(name)
        if current is not None and current.version == version:
            return False
        predictor = load_predictor(self.mlc, name, version, device=self.device)
        warm_up(predictor)
        self.loaded = {**self.loaded, name: predictor}  # one assignment: readers see old or new
        self.errors.pop(name, None)
        log.info("serving %s v%s (was %s)", name, version,
                 f"v{current.version}" if current else "nothing")
        if self.on_swap:
            self.on_swap(predictor)
        return True

    def refresh_all(self) -> None:
        for name in self.names:
            try:
                self.refresh(name)
            except Exception as exc:  # the registry or the load failed: keep what is served
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                log.warning("could not refresh %s: %s", name, self.errors[name])

    def wake(self) -> None:
        """Poll now (a promotion event arrived) instead of at the next interval."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="champion-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh_all()
            self._wake.wait(self.poll_s)
            self._wake.clear()


def warm_up(predictor: Predictor) -> None:
    """One forward pass before the swap, so the first request does not pay for lazy set-up."""
    import torch

    size = predictor.spec.input_size
    predictor.outputs(torch.zeros((1, 3, size, size), dtype=torch.uint8))
