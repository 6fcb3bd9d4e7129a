"""The champion alias and its history on a real MLflow store (SQLite)."""

from oceanml.registry import (
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
