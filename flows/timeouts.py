"""Task timeouts and retry delays an operator sets, and a timeout that says which task it
stopped.

``OCEANML_STAGE_TIMEOUTS`` (JSON, seconds per task name) replaces a task's own
``timeout_seconds`` where the flows call it, so a slow site can give its training more time
and a test can give a stalled one seconds; ``OCEANML_STAGE_RETRY_DELAYS`` replaces its
``retry_delay_seconds`` alike (GPU nodes that take minutes to come back; a test's failing
training that need not wait 30 s for its retry). A task past its timeout raises
:class:`StageTimeout` naming it, which is what its branch's failure, the nightly's summary and
its state message then say (Prefect's own error names neither task nor setting).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Task
from prefect.task_engine import TaskRunTimeoutError

from core.settings import get_settings

R = TypeVar("R")


class StageTimeout(RuntimeError):
    """A task ran past its timeout and was stopped. Not a ``TimeoutError``: Prefect would
    call the flow itself timed out, in words that name neither task nor setting."""


def timed(task: Task[Any, R]) -> Callable[..., R]:
    """``task`` with the timeout and retry delay the settings give its name (else its own),
    raising :class:`StageTimeout` by name when it runs past the timeout."""
    settings = get_settings()
    options = {option: value for option, value in (
        ("timeout_seconds", settings.stage_timeouts.get(task.name)),
        ("retry_delay_seconds", settings.stage_retry_delays.get(task.name))) if value is not None}
    bounded = task.with_options(**options) if options else task

    @functools.wraps(task.fn)
    def call(*args: Any, **kwargs: Any) -> R:
        try:
            return bounded(*args, **kwargs)
        except TaskRunTimeoutError as exc:
            raise StageTimeout(f"{task.name} ran past its timeout of "
                               f"{bounded.timeout_seconds:.0f} s and was stopped "
                               "(OCEANML_STAGE_TIMEOUTS sets it)") from exc
    return call
