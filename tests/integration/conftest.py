"""Integration tests need a real PostgreSQL: OCEANML_TEST_PG_URL (``.ci/run`` starts one);
the ``pg_url`` fixture is in ``tests/conftest.py`` (the promotion race uses it too). The
production-stack tests need the stack ``.ci/stack.py`` starts: OCEANML_STACK_DIR names it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Stack:
    """What ``.ci/stack.py start`` wrote: the worker's settings and how to reach each part."""

    dir: Path
    env: dict[str, str]
    urls: dict[str, str]
    ports: dict[str, int]
    sentinels: dict[str, str]
    admin_url: str
    databases: list[str]
    pg_data: str | None  # PostgreSQL's data folder when the stack may restart it

    @classmethod
    def load(cls, directory: Path) -> Stack:
        state = json.loads((directory / "stack.json").read_text())
        return cls(directory, state["oceanml_env"], state["urls"], state["ports"],
                   state["sentinels"], state["admin_url"], state["databases"],
                   state.get("pg_data"))

    @property
    def prefect_auth(self) -> str:
        """The Prefect server's auth string (``user:password``), as its clients send it."""
        return self.env["PREFECT_API_AUTH_STRING"]

    @property
    def worker_log(self) -> Path:
        return self.dir / "worker.log"


@pytest.fixture(scope="session")
def stack() -> Stack:
    directory = os.environ.get("OCEANML_STACK_DIR")
    if not directory:
        if os.environ.get("OCEANML_REQUIRE_STACK"):
            pytest.fail("OCEANML_REQUIRE_STACK is set but OCEANML_STACK_DIR is not")
        pytest.skip("set OCEANML_STACK_DIR (.venv/bin/python .ci/stack.py start DIR starts one)")
    return Stack.load(Path(directory))
