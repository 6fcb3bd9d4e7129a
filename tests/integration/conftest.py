"""Integration tests need a real PostgreSQL: OCEANML_TEST_PG_URL (``.ci/run`` starts one)."""

import os
from collections.abc import Iterator

import pytest

from tests.postgres import throwaway_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A database of the test's own on the server ``OCEANML_TEST_PG_URL`` names, dropped after."""
    url = os.environ.get("OCEANML_TEST_PG_URL")
    if not url:
        if os.environ.get("OCEANML_REQUIRE_PG"):
            pytest.fail("OCEANML_REQUIRE_PG is set but OCEANML_TEST_PG_URL is not")
        pytest.skip("set OCEANML_TEST_PG_URL (bash .ci/start-postgres.sh prints one)")
    with throwaway_database(url) as database_url:
        yield database_url
