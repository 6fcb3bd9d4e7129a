"""``oceanml doctor`` on real backends: the embedded default passes; unreachable ones fail
with the setting to change, the exit code says so, and no credential is printed."""

from __future__ import annotations

import re
import socket

from typer.testing import CliRunner

from core.schema import head
from oceanml.cli import app
from tests.openai_server import OpenAIStub

NAMES = ["database", "landing", "lake", "dvc remote", "mlflow", "prefect", "llm", "gpu"]
PASSWORD = "Pg-Sentinel-9f3a"
KEY = "sk-sentinel-77c1"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free now, nothing listens once the socket is closed


def rows(output: str) -> dict[str, str]:
    """Each check's mark (ok, FAIL, warn) by name, as the doctor prints them."""
    pattern = re.compile(rf"^(ok|FAIL|warn)\s+({'|'.join(NAMES)})\s{{2}}")
    return {m[2]: m[1] for line in output.splitlines() if (m := pattern.match(line))}


def test_the_embedded_default_is_all_reachable(settings, monkeypatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # a harness this worker
        result = CliRunner().invoke(app, ["doctor"])              # started set it
    assert result.exit_code == 0, result.output
    assert rows(result.output) == dict.fromkeys(NAMES, "ok")
    assert f"schema not created yet, head {head()}" in result.output
    assert "warn  notify" in result.output and "notify nobody" in result.output


def test_unreachable_backends_fail_naming_the_setting_and_never_the_secret(
        settings, monkeypatch) -> None:
    from core.database import session_factory
    from core.settings import get_settings

    session_factory(settings.db_url)  # the SQLite default, migrated
    port = closed_port()
    monkeypatch.setenv("OCEANML_DB_URL", f"postgresql+psycopg://ocean:{PASSWORD}@127.0.0.1:{port}/x")
    monkeypatch.setenv("OCEANML_LANDING_URL", "s3://landing/x")
    monkeypatch.setenv("OCEANML_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-sentinel-secret")
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    with OpenAIStub(api_key="sk-the-right-one") as stub:
        monkeypatch.setenv("OCEANML_LLM_PROVIDER", "openai")
        monkeypatch.setenv("OCEANML_LLM_BASE_URL", stub.base_url)
        monkeypatch.setenv("OCEANML_LLM_API_KEY", KEY)
        get_settings.cache_clear()
        result = CliRunner().invoke(app, ["doctor"])
    output = result.output
    assert result.exit_code == 1
    assert rows(output) == {**dict.fromkeys(NAMES, "ok"), "database": "FAIL",
                            "landing": "FAIL", "prefect": "FAIL", "llm": "FAIL"}
    assert "-> set OCEANML_DB_URL" in output and "-> set PREFECT_API_URL" in output
    assert "the key was refused (HTTP 401)" in output and "-> set OCEANML_LLM_API_KEY" in output
    assert "-> set OCEANML_LANDING_URL" in output and "Connection refused" in output
    assert f"ocean:***@127.0.0.1:{port}" in output
    for secret in (PASSWORD, KEY, "aws-sentinel-secret"):
        assert secret not in output
    assert "4 required backend(s) unreachable: database, landing, prefect, llm" in output
