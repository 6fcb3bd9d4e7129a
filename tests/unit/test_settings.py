from pathlib import Path

from pydantic import SecretStr

from core.settings import Settings


def test_embedded_defaults_live_under_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "h")
    assert s.db_url == f"sqlite:///{tmp_path / 'h' / 'oceanml.db'}"
    assert s.lake_url == (tmp_path / "h" / "lake").as_uri()
    assert s.mlflow_tracking_uri.startswith("sqlite:///") and s.llm_provider == "heuristic"


def test_building_settings_creates_nothing(tmp_path: Path) -> None:
    Settings(home=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_urls_come_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OCEANML_DB_URL", "postgresql+psycopg://u@db/oceanml")
    monkeypatch.setenv("OCEANML_LAKE_URL", "s3://bucket/lake")
    s = Settings(home=tmp_path)
    assert s.db_url == "postgresql+psycopg://u@db/oceanml"
    assert s.lake_url == "s3://bucket/lake"


def test_secrets_are_masked(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OCEANML_LLM_API_KEY", "sk-very-secret")
    s = Settings(home=tmp_path)
    assert isinstance(s.llm_api_key, SecretStr)
    assert s.llm_api_key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in repr(s)
    assert "sk-very-secret" not in str(s.public_dict())


def test_a_tracking_server_keeps_its_own_artifact_root(tmp_path: Path) -> None:
    """Experiments made against a server store artifacts where the server says (proxied to
    its S3), never on the worker's disk; a store without a server gets the local folder."""
    served = Settings(home=tmp_path, mlflow_tracking_uri="https://mlflow.example.invalid")
    assert served.mlflow_artifact_uri is None
    local = Settings(home=tmp_path, mlflow_tracking_uri="postgresql://u@db/mlflow")
    assert local.mlflow_artifact_uri == (tmp_path / "mlartifacts").resolve().as_uri()
    chosen = Settings(home=tmp_path, mlflow_tracking_uri="https://mlflow.example.invalid",
                      mlflow_artifact_uri="s3://bucket/mlflow")
    assert chosen.mlflow_artifact_uri == "s3://bucket/mlflow"
