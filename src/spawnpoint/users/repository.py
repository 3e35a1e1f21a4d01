from __future__ import annotations

import uuid

from sqlalchemy import select

from spawnpoint.kit.pagination import PageParams
from spawnpoint.kit.repository import PlatformRepository, ScopedRepository
from spawnpoint.models import Tenant, User

AccountRow = tuple[uuid.UUID, str, str, str]  # tenant id, role, user status, tenant status


class UserRepository(ScopedRepository[User]):
    model = User
    noun = "user"

    async def page_of_tenant(
        self, params: PageParams, *, tenant_id: uuid.UUID | None
    ) -> tuple[list[User], str | None]:
        """One page of readable users, of `tenant_id` only when given."""
        if tenant_id is None:
            return await self.page(params)
        return await self.page(params, User.tenant_id == tenant_id)


class AccountRepository(PlatformRepository[User]):
    """The sign-in lookup: unscoped, since it runs to find out who (and whose) the caller is."""

    model = User
    noun = "user"

    async def account(self, user_id: uuid.UUID) -> AccountRow | None:
        """The user's tenant, role and status, and its tenant's status; None when unknown."""
        found = (
            await self.session.execute(
                select(User.tenant_id, User.role, User.status, Tenant.status)
                .join(Tenant, Tenant.id == User.tenant_id)
                .where(User.id == user_id)
            )
        ).one_or_none()
        return None if found is None else (found[0], found[1], found[2], found[3])

    async def by_email(self, email: str) -> User | None:
        """The account an address signs in with (stored lower-case), whatever its tenant."""
        statement = self.readable().where(User.email == email.lower())
        return (await self.session.execute(statement)).scalar_one_or_none()
