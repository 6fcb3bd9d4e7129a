"""Throw-away PostgreSQL databases on a server the tests or benchmarks were pointed at.

The URL given (``OCEANML_TEST_PG_URL``, ``OCEANML_BENCH_PG_URL``) names a server and a database
to connect through; nothing in that database is touched. Each user gets a database of its own,
created here and dropped after, so a developer may point the suite at a server holding real data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@contextmanager
def throwaway_database(server_url: str, prefix: str = "oceanml_t") -> Iterator[str]:
    """Create an empty database on ``server_url``'s server, yield its URL, drop it after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:  # FORCE: a pool left open by the test must not block it
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
