"""What counts as a credential in force: a message scrubbed with :func:`core.secrets.scrub`
never shows one, whichever of its forms (whole, or the password half of a ``user:password``)
it quotes."""

from __future__ import annotations

from core.secrets import MASK, known_secrets, scrub
from core.settings import Settings


def test_the_prefect_auth_string_and_its_password_are_scrubbed(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "oceanml:hunter2-prefect")
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_cloudkey123")
    monkeypatch.setenv("OCEANML_MLFLOW_TRACKING_URI", "http://ops:ml-pass-9@mlflow:5000")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api")
    secrets = known_secrets(Settings(home=tmp_path))
    said = scrub("401 for oceanml:hunter2-prefect; password hunter2-prefect; key "
                 "pnu_cloudkey123; http://ops:ml-pass-9@mlflow:5000", secrets)
    assert not any(s in said for s in ("hunter2-prefect", "pnu_cloudkey123", "ml-pass-9")), said
    assert said.count(MASK) == 4
    assert "prefect.internal" not in str(secrets)  # a URL without a password is no secret
