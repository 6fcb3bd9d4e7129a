"""The logger a stage writes to: Prefect's run logger inside a run, a plain one outside.

Task bodies are also called directly (``task.fn()`` in tests, plain calls in benchmarks, a
script): ``get_run_logger`` raises there, which would make a stage's logic depend on being
orchestrated.
"""

from __future__ import annotations

import logging


def stage_logger(stage: str) -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger when called inside a flow or task run, else ``oceanml.<stage>``."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(f"oceanml.{stage}")
