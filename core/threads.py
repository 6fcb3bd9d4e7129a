"""How many threads torch uses in each of the fleet's branch processes.

torch gives every process one thread per core, so a nightly whose five branches evaluate,
score and build at once on eight cores ran forty threads that spent their time switching
(two nightlies side by side on two cores: 286 s at two threads per process, 151 s at one).
Each branch gets its share of the cores instead, and the one holding the training slot
(:func:`flows.training.training_slot`) gets what the others' shares leave while it trains. An
``OMP_NUM_THREADS`` the operator set is their choice and stands.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

_current: CoreShare | None = None


@dataclass(frozen=True)
class CoreShare:
    """A branch's torch threads: ``threads`` while the branches overlap, ``training`` while
    it holds the training slot (what the others' shares leave)."""

    threads: int
    training: int

    @classmethod
    def of(cls, branches: int, cores: int | None = None) -> CoreShare | None:
        """The share of each of ``branches`` processes running at once on ``cores`` (default:
        the cores this process may run on); None where OMP_NUM_THREADS is set."""
        if os.environ.get("OMP_NUM_THREADS"):
            return None
        cores = cores or usable_cores()
        share = max(1, cores // max(1, branches))
        return cls(share, max(share, cores - (branches - 1) * share))


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit included)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - macOS


def use(share: CoreShare | None) -> None:
    """Make ``share`` this process's (called first thing in a branch's process); without one,
    the OMP_NUM_THREADS of the environment, applied here since a fork server loaded torch
    under the environment it started with."""
    global _current
    _current = share
    requested = os.environ.get("OMP_NUM_THREADS", "")
    threads = share.threads if share is not None else int(requested) if requested.isdigit() \
        else None
    if threads:
        import torch

        torch.set_num_threads(threads)


@contextlib.contextmanager
def training_threads() -> Iterator[None]:
    """This process's training share for the duration, then its share again; nothing
    outside a branch process, where torch keeps its own count."""
    share = _current
    if share is None:
        yield
        return
    import torch

    torch.set_num_threads(share.training)
    try:
        yield
    finally:
        torch.set_num_threads(share.threads)
