"""Progress a person can see: a terminal bar and a Prefect progress artifact, moved together."""

from __future__ import annotations

import time
from typing import Any

from tqdm import tqdm

ARTIFACT_INTERVAL_S = 1.0  # the UI polls; one API call per item cost enrich 4 s in 2 000 items


class StageProgress:
    """Call with ``(done, total)``; shows a tqdm bar on a terminal and, inside a Prefect run,
    a progress artifact that moves in the UI. Outside Prefect it is just the bar.

    The artifact is updated at most once per ``ARTIFACT_INTERVAL_S``, and always at the end
    (``done == total``): each update is a call to the Prefect API, and stages report per item.
    """

    def __init__(self, stage: str, unit: str = "item", bar: bool = True) -> None:
        """``bar=False``: the artifact only (e.g. beside Lightning's own progress bar)."""
        self.stage = stage
        self.unit = unit
        self.show_bar = bar
        self.bar: tqdm | None = None
        self.artifact_id: Any = None
        self._updated = 0.0  # monotonic time of the last artifact update

    def __enter__(self) -> StageProgress:
        try:
            from prefect.artifacts import create_progress_artifact
            from prefect.context import get_run_context

            get_run_context()
            self.artifact_id = create_progress_artifact(
                0.0, key=f"{self.stage}-progress", description=f"{self.stage}: starting"
            )
            self._updated = time.monotonic()  # created at 0%: the first update can wait
        except Exception:  # not inside a Prefect run: the terminal bar is enough
            self.artifact_id = None
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None and self.show_bar:
            self.bar = tqdm(total=total, desc=self.stage, unit=self.unit, disable=None)
        if self.bar is not None:
            self.bar.total = total  # may grow, e.g. while a listing is still being walked
            self.bar.n = done
            self.bar.refresh()
        now = time.monotonic()
        if self.artifact_id is not None and (
                done >= total or now - self._updated >= ARTIFACT_INTERVAL_S):
            from prefect.artifacts import update_progress_artifact

            self._updated = now
            update_progress_artifact(
                self.artifact_id, 100.0 * done / max(total, 1),
                description=f"{self.stage}: {done}/{total} {self.unit}s",
            )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
