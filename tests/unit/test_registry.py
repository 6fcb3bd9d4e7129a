"""The champion alias and its history on a real MLflow store (SQLite)."""

from core.registry import (
    CHAMPION,
    PREVIOUS,
    alias_version,
    client,
    ensure_registered_model,
    set_champion,
    version_by_tag,
)


def test_champion_moves_and_the_previous_one_is_kept_for_rollback(settings, tmp_path) -> None:
    mlc = client(settings)
    ensure_registered_model(mlc, "m")
    ensure_registered_model(mlc, "m")  # idempotent
    for key in ("a", "b"):
        mlc.create_model_version("m", source=str(tmp_path), tags={"training_key": key})
    assert set_champion(mlc, "m", "1") is None
    assert set_champion(mlc, "m", 1) == "1"  # the same version again: no self-history
    assert alias_version(mlc, "m", PREVIOUS) is None
    assert set_champion(mlc, "m", "2") == "1"
    assert str(alias_version(mlc, "m", CHAMPION).version) == "2"
    assert str(alias_version(mlc, "m", PREVIOUS).version) == "1"
    assert str(version_by_tag(mlc, "m", "training_key", "b").version) == "2"
    assert version_by_tag(mlc, "m", "training_key", "zzz") is None


def test_a_password_in_the_tracking_uri_moves_to_mlflows_own_variables(monkeypatch,
                                                                        tmp_path) -> None:
    """MLflow prints run links built from the URI it is given; the password goes to
    MLFLOW_TRACKING_PASSWORD (sent as basic auth) and the URI MLflow sees has none."""
    import os

    from core.registry import tracking_uri
    from core.settings import Settings

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    served = Settings(home=tmp_path, mlflow_tracking_uri="https://ops:p%40ss@mlflow.invalid:5000")
    assert tracking_uri(served) == "https://mlflow.invalid:5000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == \
        ("ops", "p@ss")
    local = Settings(home=tmp_path)
    assert tracking_uri(local) == local.mlflow_tracking_uri
