"""Integration tests need a real PostgreSQL: OCEANML_TEST_PG_URL (``.ci/run`` starts one);
the ``pg_url`` fixture is in ``tests/conftest.py`` (the promotion race uses it too)."""
