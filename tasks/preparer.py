"""Preparing landing candidates (``tasks.landing``) in worker processes: the pool, what each
worker holds, and what it sends back.

A worker returns plain tuples, one per prepared observation, never the ``Prepared`` objects
themselves, and not the candidates the parent already holds: pickling the objects both ways
cost about 30 us per observation, as much as the parent's whole share of the storing.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from core.batches import slices
from core.settings import Settings
from core.spawning import spare_children_the_engine
from core.store import Location, fetch_all, filesystem
from tasks.landing import Candidate, Prepared, pair_keys, prepare
from tasks.validate import Limits, Rejection

BATCH = 32  # candidates per worker call: amortises pickling without starving a worker

#: What a worker sends back of a ``Prepared``: its fields after the candidate
Sent = tuple[str, str | None, dict[str, Any] | None, str | None, Rejection | None]
#: A batch handed to the workers (or prepared here), and the candidates it holds
Submitted = tuple[Future, list[Candidate]]

_worker_state: tuple[Location, Settings, Limits, Location] | None = None


def _start_worker(settings: Settings, limits: Limits) -> None:
    global _worker_state
    _worker_state = (filesystem(settings.landing_url, settings), settings, limits,
                     filesystem(settings.lake_url, settings))


def _sent(prepared: Prepared) -> Sent:
    return (prepared.source_key, prepared.content_hash, prepared.row, prepared.image_key,
            prepared.rejection)


def _prepare_batch(candidates: list[Candidate]) -> list[list[Sent]]:
    """In a worker: each candidate's prepared observations (a table has several)."""
    landing, settings, limits, lake = _worker_state
    fetched = fetch_all(landing, pair_keys(candidates, settings))
    return [[_sent(p) for p in prepare(c, landing, settings, limits, lake, fetched)]
            for c in candidates]


def worker_count(setting: int) -> int:
    """``ingest_workers``: 0 means one per core, at most 8."""
    return setting if setting > 0 else min(8, os.cpu_count() or 1)


class Preparer:
    """Prepares chunks of candidates, in worker processes once a run is large enough.

    A chunk smaller than ``pool_from`` (a run with little new) is prepared here: starting
    workers costs about a second of imports. The pool is spawned, not forked, because the
    caller may hold threads (Prefect, SQLAlchemy pools) that a fork would copy mid-state.
    ``submit`` returns at once so that the caller stores one chunk while the next is read.
    """

    def __init__(self, landing: Location, settings: Settings, limits: Limits, lake: Location,
                 *, workers: int, pool_from: int) -> None:
        self.landing, self.settings, self.limits, self.lake = landing, settings, limits, lake
        self.workers, self.pool_from = workers, pool_from
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, chunk: list[Candidate]) -> list[Submitted]:
        """The chunk's batches with the futures of their prepared observations, in order
        (done already when the chunk was prepared here)."""
        if self._pool is None and (self.workers <= 1 or len(chunk) < self.pool_from):
            done: Future = Future()
            done.set_result([[_sent(p) for p in prepare(c, self.landing, self.settings,
                                                         self.limits, self.lake)]
                             for c in chunk])
            return [(done, chunk)]
        if self._pool is None:
            spare_children_the_engine()
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=get_context("spawn"),
                initializer=_start_worker, initargs=(self.settings, self.limits))
        return [(self._pool.submit(_prepare_batch, batch), batch)
                for batch in slices(chunk, BATCH)]

    @staticmethod
    def collect(submitted: list[Submitted]) -> list[Prepared]:
        return [Prepared(candidate, *sent) for future, batch in submitted
                for candidate, prepared in zip(batch, future.result(), strict=True)
                for sent in prepared]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Preparer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
