"""Password hashing (argon2id) and the opaque tokens of sessions, invites and resets."""

from __future__ import annotations

import asyncio
import hashlib
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from spawnpoint.config import Settings

TOKEN_BYTES = 32
MIN_PASSWORD = 12
MAX_PASSWORD = 1024


class Passwords:
    """argon2id at PASSWORD_HASH_* (never below OWASP's m=19 MiB, t=2, p=1).

    Hashing runs in a worker thread (argon2-cffi releases the GIL), so a login does not
    stall every other request for its tens of milliseconds.
    """

    def __init__(self, settings: Settings) -> None:
        self.hasher = PasswordHasher(
            time_cost=settings.password_hash_time_cost,
            memory_cost=settings.password_hash_memory_kib,
            parallelism=settings.password_hash_parallelism,
            type=Type.ID,
        )
        # Verified when the account is unknown or has no password, so that answer costs
        # what a wrong password costs.
        self.dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored_hash: str, password: str) -> bool:
        return await asyncio.to_thread(self._verify, stored_hash, password)

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        return self.hasher.check_needs_rehash(stored_hash)


def new_token() -> str:
    """An opaque, high-entropy token (refresh, invite, set-password)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
