"""Online answers to the ``predictions`` table, written by a thread, never by a request.

Requests put rows on a bounded queue and return; the writer drains it every ``interval_s`` in
one ``INSERT``. When the database is slow or down the queue fills and further rows are
dropped and counted (``oceanml_prediction_log_dropped_total``): serving goes on either way.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import sessionmaker

from core.database import insert_new
from core.db import Prediction

log = logging.getLogger("oceanml.serve")


class PredictionLog:
    def __init__(self, sessions: sessionmaker, *, interval_s: float, capacity: int = 100_000,
                 on_written: Callable[[int], None] | None = None,
                 on_dropped: Callable[[int], None] | None = None) -> None:
        self.sessions = sessions
        self.interval_s = interval_s
        self.rows: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=capacity)
        self.on_written = on_written or (lambda n: None)
        self.on_dropped = on_dropped or (lambda n: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def add(self, rows: list[dict[str, Any]]) -> None:
        for n, row in enumerate(rows):
            try:
                self.rows.put_nowait(row)
            except queue.Full:
                self.on_dropped(len(rows) - n)
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush()

    def flush(self) -> int:
        batch = []
        while True:
            try:
                batch.append(self.rows.get_nowait())
            except queue.Empty:
                break
        if not batch:
            return 0
        try:
            with self.sessions() as session:
                insert_new(session, Prediction, batch)
                session.commit()
        except Exception as exc:  # the DB is down: these answers are not recorded
            log.warning("could not record %d online predictions: %s", len(batch), exc)
            self.on_dropped(len(batch))
            return 0
        self.on_written(len(batch))
        return len(batch)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()
