"""Progress a person can see: a terminal bar and a Prefect progress artifact, moved together."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class StageProgress:
    """Call with ``(done, total)``; shows a tqdm bar on a terminal and, inside a Prefect run,
    a progress artifact that moves in the UI. Outside Prefect it is just the bar."""

    def __init__(self, stage: str, unit: str = "item") -> None:
        self.stage = stage
        self.unit = unit
        self.bar: tqdm | None = None
        self.artifact_id: Any = None

    def __enter__(self) -> StageProgress:
        try:
            from prefect.artifacts import create_progress_artifact
            from prefect.context import get_run_context

            get_run_context()
            self.artifact_id = create_progress_artifact(
                0.0, key=f"{self.stage}-progress", description=f"{self.stage}: starting"
            )
        except Exception:  # not inside a Prefect run: the terminal bar is enough
            self.artifact_id = None
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.stage, unit=self.unit, disable=None)
        self.bar.total = total  # may grow, e.g. while a listing is still being walked
        self.bar.n = done
        self.bar.refresh()
        if self.artifact_id is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(
                self.artifact_id, 100.0 * done / max(total, 1),
                description=f"{self.stage}: {done}/{total} {self.unit}s",
            )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
