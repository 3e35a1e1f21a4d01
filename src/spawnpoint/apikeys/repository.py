from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import ColumnElement, or_, select, update

from spawnpoint.kit.pagination import PageParams
from spawnpoint.kit.repository import PlatformRepository, ScopedRepository
from spawnpoint.models import ApiKey, Tenant, User


class KeyRow(NamedTuple):
    """What authenticating with a key needs: the key, and its creator's account now."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    role: str
    expires_at: datetime | None
    revoked_at: datetime | None
    user_role: str
    user_status: str
    tenant_status: str


class ApiKeyRepository(ScopedRepository[ApiKey]):
    model = ApiKey
    noun = "API key"

    def _mine(self, user_id: uuid.UUID | None) -> tuple[ColumnElement[bool], ...]:
        return () if user_id is None else (ApiKey.user_id == user_id,)

    async def page_for(
        self, params: PageParams, *, user_id: uuid.UUID | None
    ) -> tuple[list[ApiKey], str | None]:
        """One page of the tenant's keys; only `user_id`'s when given."""
        return await self.page(params, *self._mine(user_id))

    async def find_for(self, key_id: uuid.UUID, *, user_id: uuid.UUID | None) -> ApiKey | None:
        statement = self.readable().where(ApiKey.id == key_id, *self._mine(user_id))
        return (await self.session.execute(statement)).scalar_one_or_none()


class ApiKeyLookup(PlatformRepository[ApiKey]):
    """The sign-in lookup by key hash: unscoped, it finds out whose key it is."""

    model = ApiKey
    noun = "API key"

    async def by_hash(self, digest: str) -> KeyRow | None:
        found = (
            await self.session.execute(
                select(
                    ApiKey.id,
                    ApiKey.tenant_id,
                    ApiKey.user_id,
                    ApiKey.role,
                    ApiKey.expires_at,
                    ApiKey.revoked_at,
                    User.role,
                    User.status,
                    Tenant.status,
                )
                .join(User, User.id == ApiKey.user_id)
                .join(Tenant, Tenant.id == ApiKey.tenant_id)
                .where(ApiKey.key_hash == digest)
            )
        ).one_or_none()
        return None if found is None else KeyRow(*found)

    async def touch(self, key_id: uuid.UUID, *, now: datetime, every: timedelta) -> None:
        """Set `last_used_at`, unless it was set less than `every` ago (by any replica)."""
        await self.session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key_id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - every),
            )
            .values(last_used_at=now)
        )
