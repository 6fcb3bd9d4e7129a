"""Credentials never printed: URLs lose their password, secret settings show as asterisks."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def mask_url(url: str | None) -> str | None:
    """``url`` with the password of its user-info replaced (``postgresql://u:***@host/db``);
    a URL without one is returned as is."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{host}"))


SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN", "OPENAI_API_KEY", "PREFECT_API_KEY",
              "PREFECT_API_AUTH_STRING")


def known_secrets(settings: object | None = None) -> set[str]:
    """The credential values in force: secret settings, passwords inside the settings' URLs
    and the environment's, and the usual credential variables."""
    from pydantic import SecretStr

    values = [os.environ.get(name) for name in SECRET_ENV]
    urls = [v for v in os.environ.values() if "://" in v and "@" in v]
    for _, value in (settings or ()):
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
        elif isinstance(value, str) and "://" in value:
            urls.append(value)
    values += [urlsplit(u).password for u in urls]
    auth = os.environ.get("PREFECT_API_AUTH_STRING", "")  # user:password; either half alone
    values.append(auth.partition(":")[2])
    return {v for v in values if v and len(v) >= 4}


def scrub(text: str, secrets: set[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by the mask (longest first)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
