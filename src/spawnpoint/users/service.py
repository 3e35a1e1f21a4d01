from __future__ import annotations

import uuid

from spawnpoint.kit.errors import Conflict, Forbidden
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import Role, User, UserStatus
from spawnpoint.security import Principal
from spawnpoint.teardown.repository import USER
from spawnpoint.teardown.schemas import TeardownAccepted
from spawnpoint.teardown.service import WorkspaceTeardown
from spawnpoint.tenants.repository import TenantRepository
from spawnpoint.tenants.service import listed_tenant, resolve_owner_tenant
from spawnpoint.users.repository import UserRepository
from spawnpoint.users.schemas import UserCreate, UserUpdate


class UserService:
    def __init__(
        self, repository: UserRepository, tenants: TenantRepository, *, teardown: WorkspaceTeardown
    ) -> None:
        self.repository = repository
        self.tenants = tenants
        self.teardown = teardown

    async def list_page(
        self, *, params: PageParams, tenant_id: uuid.UUID | None
    ) -> tuple[list[User], str | None]:
        tenant_id = await listed_tenant(self.tenants, tenant_id)
        return await self.repository.page_of_tenant(params, tenant_id=tenant_id)

    async def get(self, *, user_id: uuid.UUID) -> User:
        return await self.repository.get(user_id)

    @staticmethod
    def _check_role(actor: Principal, role: Role) -> None:
        if role == Role.operator and not actor.operator:
            raise Forbidden("Only operators can grant the operator role.")

    async def create(self, *, actor: Principal, user_in: UserCreate) -> User:
        tenant_id = await resolve_owner_tenant(self.tenants, actor, user_in.tenant_id)
        self._check_role(actor, user_in.role)
        user = User(**user_in.model_dump(exclude={"tenant_id"}), tenant_id=tenant_id)
        return await self.repository.add(user)

    async def _editable(
        self, actor: Principal, user_id: uuid.UUID, *, for_update: bool = False
    ) -> User:
        if for_update:
            user = await self.repository.get_locked(user_id)
        else:
            user = await self.repository.get(user_id)
        if user.role == Role.operator and not actor.operator:
            raise Forbidden("Only operators can change an operator's account.")
        return user

    async def update(self, *, actor: Principal, user_id: uuid.UUID, user_in: UserUpdate) -> User:
        user = await self._editable(actor, user_id)
        changes = user_in.changes()
        if "tenant_id" in changes:
            await resolve_owner_tenant(self.tenants, actor, changes["tenant_id"])
        if "role" in changes:
            role = Role(changes["role"])
            self._check_role(actor, role)
            if user.id == actor.user_id and role.rank > Role(user.role).rank:
                raise Forbidden("Nobody can raise their own role.")
        if changes.get("status") == UserStatus.active and user.deletion_requested_at is not None:
            raise Conflict("The user is being deleted; the account cannot be enabled again.")
        for field, value in changes.items():
            setattr(user, field, value)
        await self.repository.flush()
        return user

    async def delete(
        self, *, actor: Principal, user_id: uuid.UUID, cascade: bool
    ) -> TeardownAccepted | None:
        """Delete the user, or (`cascade`) tear the workspaces they own down first.

        While the deletion waits for them, the account is disabled.
        """
        await self.teardown.hold_spawns((await self.repository.get(user_id)).tenant_id)
        user = await self._editable(actor, user_id, for_update=True)
        if user.id == actor.user_id:
            raise Conflict("You cannot delete your own account.")
        return await self.teardown.delete(kind=USER, parent=user, actor=actor, cascade=cascade)
