"""Bearer tokens for agents and users: shown once, stored as a lookup prefix plus a SHA-256 digest.

The secret part has 256 bits of randomness, so a plain hash is enough (no slow KDF needed) and,
unlike an HMAC keyed with SECRET_KEY, rotating SECRET_KEY does not revoke every agent.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX_LEN = 8


def new_token(kind: str) -> tuple[str, str, str]:
    """Return (token, prefix, digest) for a new token such as ``hwa_1a2b3c4d_<secret>``."""
    prefix = secrets.token_hex(PREFIX_LEN // 2)
    token = f"{kind}_{prefix}_{secrets.token_urlsafe(32)}"
    return token, prefix, digest(token)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def split(token: str, kind: str) -> str | None:
    """The lookup prefix of a well-formed token of this kind, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != kind or len(parts[1]) != PREFIX_LEN or len(token) > 200:
        return None
    # Prefixes are hex (new_token): anything else, a NUL included, is no token and never a query.
    return parts[1] if all(c in "0123456789abcdef" for c in parts[1]) else None


def matches(token: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(token), stored_digest)
