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


#: What a JSON log line carries besides the message, when a record has it (``extra=``).
JSON_FIELDS = ("request_id", "client", "status", "ms", "method", "path", "model", "version")


class JsonLines(logging.Formatter):
    """One JSON object per line (``OCEANML_LOG_FORMAT=json``), for a log aggregator: time,
    level, logger, message, and the request's fields when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import UTC, datetime

        line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        line.update({k: getattr(record, k) for k in JSON_FIELDS
                     if getattr(record, k, None) is not None})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_to_stderr(name: str, fmt: str) -> None:
    """Send logger ``name`` (and those under it) to stderr, as text or JSON lines."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
