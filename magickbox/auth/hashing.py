"""Passwords (argon2id, argon2-cffi's defaults) and API tokens (random, stored as SHA-256).

A token carries 256 random bits, so a fast hash is enough to store it: nobody can guess
its way through 2**256; a password is chosen by a person and needs the slow hash.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "mbt_"
# The setting password_hash_cost: "test" only saves test suites their seconds per hash.
# Verifying reads the cost from the stored hash, so either hasher checks either's hashes.
_HASHERS = {
    "standard": PasswordHasher.from_parameters(profiles.RFC_9106_LOW_MEMORY),
    "test": PasswordHasher.from_parameters(profiles.CHEAPEST),
}


@functools.cache
def _dummy(cost: str) -> str:
    """Verified when the user does not exist, so a wrong name costs as long as a wrong
    password (made at the first need: a hash takes a good part of a second)."""
    return _HASHERS[cost].hash(secrets.token_urlsafe(16))


def hash_password(password: str, cost: str = "standard") -> str:
    return _HASHERS[cost].hash(password)


def verify_password(stored: str | None, password: str, cost: str = "standard") -> bool:
    """Whether ``password`` matches ``stored`` (None: an unknown user, never matches)."""
    try:
        return _HASHERS[cost].verify(stored or _dummy(cost), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets (or their digests)."""
    return hmac.compare_digest(a.encode(), b.encode())


def new_password() -> str:
    return secrets.token_urlsafe(15)
