"""Fixed-size slices of a list, for the stages that work through rows a batch at a time.

Kept in a module of its own that imports nothing, so the spawned ingest workers' light
imports stay light (``itertools.batched`` arrives with Python 3.12 and yields tuples).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def slices(values: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``values``, each ``size`` long except perhaps the last."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
