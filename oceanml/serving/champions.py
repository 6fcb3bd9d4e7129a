"""The champion of each served model, loaded, and kept current as the registry moves.

A poller thread (:class:`~oceanml.serving.following.Follower`) reads each model's
``champion`` alias every ``poll_s`` (any MLflow backend answers that) and sooner when woken
(the ``oceanml.model.promoted`` event). A new version is loaded and warmed up beside the old one, then swapped in with one
assignment: a request holds the predictor it started with, so none fails or waits for a
load, and each answer names the version that produced it. A failed load keeps the old one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.registry import alias_version
from models.predictor import Predictor, load_predictor
from oceanml.serving.following import Follower

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("oceanml.serve")


class Champions(Follower):
    """The loaded predictor per model name; read with :meth:`get`, never locked on read."""

    thread_name = "champion-poller"

    def __init__(self, mlc: MlflowClient, names: list[str], *, poll_s: float,
                 device: str | None = None,
                 on_swap: Callable[[Predictor], None] | None = None) -> None:
        super().__init__(poll_s)
        self.mlc = mlc
        self.names = list(names)
        self.device = device
        self.on_swap = on_swap
        self.loaded: dict[str, Predictor] = {}
        self.errors: dict[str, str] = {}

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


def warm_up(predictor: Predictor) -> None:
    """One forward pass before the swap, so the first request does not pay for lazy set-up."""
    import torch

    size = predictor.spec.input_size
    predictor.outputs(torch.zeros((1, 3, size, size), dtype=torch.uint8))
