from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.kit.repository import Repository
from spawnpoint.models import User
from spawnpoint.scope import TenantScope


class UserRepository(Repository[User]):
    model = User
    noun = "user"

    def __init__(self, session: AsyncSession, scope: TenantScope) -> None:
        super().__init__(session)
        self.scope = scope

    def readable(self) -> Select[User]:
        statement = select(User)
        if not self.scope.all_tenants:
            statement = statement.where(User.tenant_id == self.scope.tenant_id)
        return statement
