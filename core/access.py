"""What an API key is and may do, apart from where keys are stored: the key's form
(``ocn_<key id>_<secret>``), its scrypt hash, scopes, and a server's view of one key. Light on
imports: the settings read configured keys through it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

PREFIX = "ocn_"
TOKEN = re.compile(r"^ocn_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# scrypt at 2**14 x 8: 16 MiB and about 50 ms a check; a server checks a key once and keeps
# the digest of what passed in memory
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class Scope(StrEnum):
    predict = "predict"  # ask the champions, list them, read the metrics
    ingest = "ingest"  # upload observations, as the one device the key is bound to
    admin = "admin"  # everything, and manage keys


class ConfiguredKey(BaseModel):
    """A key given by the ``OCEANML_API_KEYS`` setting (a JSON object of name -> this), as
    ``oceanml keys create --print-only`` writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str = Field(pattern=r"^[0-9a-f]{12}$")
    hash: str = Field(pattern=r"^scrypt\$")
    scope: Scope
    device_id: str | None = None
    rate: float | None = Field(None, gt=0)


@dataclass(frozen=True)
class Grant:
    """What a key that passed may do: the server's view of one key."""

    name: str
    key_id: str
    hash: str
    scope: Scope
    device_id: str | None
    rate: float | None
    revoked: bool = False

    def allows(self, needed: Scope) -> bool:
        """Whether the scope covers ``needed`` (revocation is checked before, as a 401)."""
        return self.scope is Scope.admin or self.scope is needed


def new_key() -> tuple[str, str]:
    """A fresh key and its public id."""
    key_id = secrets.token_hex(6)
    return f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}", key_id


def key_id_of(token: str) -> str | None:
    """The public id of a well-formed key, None for anything else."""
    match = TOKEN.match(token)
    return match.group(1) if match else None


def hash_key(token: str, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$digest`` of ``token``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(token.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=64 * 1024 * 1024)
    b64 = base64.urlsafe_b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify(token: str, stored: str) -> bool:
    """Whether ``token`` is the key ``stored`` is the hash of (about 50 ms: scrypt)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        want = base64.urlsafe_b64decode(digest)
        got = hashlib.scrypt(token.encode(), salt=base64.urlsafe_b64decode(salt), n=int(n),
                             r=int(r), p=int(p), maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and hmac.compare_digest(got, want)


def configured_key(scope: Scope, device_id: str | None = None, rate: float | None = None
                   ) -> tuple[str, ConfiguredKey]:
    """A fresh key and the entry that names it in ``OCEANML_API_KEYS`` (no DB row)."""
    token, key_id = new_key()
    return token, ConfiguredKey(key_id=key_id, hash=hash_key(token), scope=scope,
                                device_id=device_id, rate=rate)
