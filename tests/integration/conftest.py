"""Integration tests need a real PostgreSQL: OCEANML_TEST_PG_URL (``.ci/run`` starts one)."""

import os

import pytest
from sqlalchemy import create_engine, text


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("OCEANML_TEST_PG_URL")
    if not url:
        if os.environ.get("OCEANML_REQUIRE_PG"):
            pytest.fail("OCEANML_REQUIRE_PG is set but OCEANML_TEST_PG_URL is not")
        pytest.skip("set OCEANML_TEST_PG_URL (bash .ci/start-postgres.sh prints one)")
    engine = create_engine(url)
    with engine.begin() as conn:  # a clean schema for every test
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url
