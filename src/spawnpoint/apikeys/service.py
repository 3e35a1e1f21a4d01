from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import timedelta

from spawnpoint.apikeys import keys
from spawnpoint.apikeys.repository import ApiKeyLookup, ApiKeyRepository
from spawnpoint.apikeys.schemas import ApiKeyCreate
from spawnpoint.db import Database
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import Forbidden, as_utc, field_error
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import ApiKey, Role
from spawnpoint.security import Principal

log = logging.getLogger("spawnpoint.apikeys")
LAST_USED_EVERY = timedelta(minutes=1)


class ApiKeyService:
    """Admins see and revoke every key of their tenant; everyone else their own."""

    def __init__(self, repository: ApiKeyRepository) -> None:
        self.repository = repository

    @staticmethod
    def _owner_filter(actor: Principal) -> uuid.UUID | None:
        return None if actor.has(Role.admin) else actor.user_id

    async def create(self, *, actor: Principal, key_in: ApiKeyCreate) -> tuple[ApiKey, str]:
        role = key_in.role or actor.role
        if role.rank > actor.role.rank and not actor.operator:
            raise Forbidden(f"A key's role cannot be higher than yours ({actor.role.value}).")
        if role == Role.operator and not actor.operator:
            raise Forbidden("Only operators can create operator keys.")
        expires_at = as_utc(key_in.expires_at, "#/expires_at")
        if expires_at is not None and expires_at <= utcnow():
            raise field_error("#/expires_at", "The expiry must be in the future.")
        secret = keys.generate()
        key = ApiKey(
            tenant_id=actor.tenant_id,
            user_id=actor.user_id,
            name=key_in.name,
            role=role,
            prefix=keys.display_prefix(secret),
            key_hash=keys.key_hash(secret),
            expires_at=expires_at,
        )
        return await self.repository.add(key), secret

    async def list_page(
        self, *, actor: Principal, params: PageParams
    ) -> tuple[list[ApiKey], str | None]:
        return await self.repository.page_for(params, user_id=self._owner_filter(actor))

    async def get(self, *, actor: Principal, key_id: uuid.UUID) -> ApiKey:
        key = await self.repository.find_for(key_id, user_id=self._owner_filter(actor))
        if key is None:
            raise self.repository.not_found()
        return key

    async def revoke(self, *, actor: Principal, key_id: uuid.UUID) -> None:
        key = await self.get(actor=actor, key_id=key_id)
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            await self.repository.flush()


class LastUsed:
    """Writes a key's `last_used_at` at most once a minute per key and process.

    The write runs in a transaction of its own after the request's, so a read request stays
    read-only and pays nothing; its statement also skips a row another replica touched
    within the minute.
    """

    def __init__(self, database: Database, *, every: timedelta = LAST_USED_EVERY) -> None:
        self.database = database
        self.every = every
        self._next: dict[uuid.UUID, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def touch(self, key_id: uuid.UUID) -> None:
        now = time.monotonic()
        if self._next.get(key_id, 0.0) > now:
            return
        if len(self._next) >= 10_000:
            self._next.clear()
        self._next[key_id] = now + self.every.total_seconds()
        work = self.database.work_loop
        if work is not None and work is not asyncio.get_running_loop():
            # A poll on the serving loop (kit/loops.py): writes run on the work loop.
            work.call_soon_threadsafe(self._start, key_id)
        else:
            self._start(key_id)

    def _start(self, key_id: uuid.UUID) -> None:
        task = asyncio.create_task(self._write(key_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, key_id: uuid.UUID) -> None:
        try:
            async with self.database.transaction(write=True) as session:
                await ApiKeyLookup(session).touch(key_id, now=utcnow(), every=self.every)
        except Exception:
            log.warning("could not record the use of API key %s", key_id, exc_info=True)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
