from __future__ import annotations

import re
import uuid

from spawnpoint.kit.errors import Forbidden, field_error
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import Tenant
from spawnpoint.plans.repository import PlanRepository
from spawnpoint.security import Principal
from spawnpoint.teardown.repository import TENANT
from spawnpoint.teardown.schemas import TeardownAccepted
from spawnpoint.teardown.service import WorkspaceTeardown
from spawnpoint.tenants.repository import TenantRepository
from spawnpoint.tenants.schemas import TenantCreate, TenantUpdate


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].strip("-")
    return slug or "tenant"


async def resolve_owner_tenant(
    tenants: TenantRepository, actor: Principal, tenant_id: uuid.UUID | None
) -> uuid.UUID:
    """The tenant a new object belongs to: the caller's, or any tenant for an operator."""
    if tenant_id is None or tenant_id == actor.tenant_id:
        return actor.tenant_id
    if not actor.operator:
        raise Forbidden("Only operators can create objects in another tenant.")
    if await tenants.find(tenant_id) is None:
        raise field_error("#/tenant_id", "No tenant has this id.")
    return tenant_id


async def listed_tenant(tenants: TenantRepository, tenant_id: uuid.UUID | None) -> uuid.UUID | None:
    """A list's `?tenant_id=` filter: a tenant the caller may see, else 422 as for no tenant.

    Another tenant's id answers exactly like an id nobody has, so a non-operator learns
    nothing about which tenants exist, and a filter that cannot match says so instead of
    answering an empty page.
    """
    if tenant_id is not None and await tenants.find(tenant_id) is None:
        raise field_error("#/query/tenant_id", "No tenant has this id.")
    return tenant_id


class TenantService:
    def __init__(
        self, repository: TenantRepository, plans: PlanRepository, *, teardown: WorkspaceTeardown
    ) -> None:
        self.repository = repository
        self.plans = plans
        self.teardown = teardown

    async def list_page(self, *, params: PageParams) -> tuple[list[Tenant], str | None]:
        return await self.repository.page(params)

    async def get(self, *, tenant_id: uuid.UUID) -> Tenant:
        return await self.repository.get(tenant_id)

    async def _check_plan(self, plan_id: uuid.UUID) -> None:
        if await self.plans.find(plan_id) is None:
            raise field_error("#/plan_id", "No plan has this id.")

    async def create(self, *, tenant_in: TenantCreate) -> Tenant:
        await self._check_plan(tenant_in.plan_id)
        tenant = Tenant(**tenant_in.model_dump(exclude={"slug"}))
        tenant.slug = tenant_in.slug or slugify(tenant_in.name)
        return await self.repository.add(tenant)

    async def update(self, *, tenant_id: uuid.UUID, tenant_in: TenantUpdate) -> Tenant:
        tenant = await self.repository.get(tenant_id)
        changes = tenant_in.changes()
        if "plan_id" in changes:
            await self._check_plan(changes["plan_id"])
        for field, value in changes.items():
            setattr(tenant, field, value)
        await self.repository.flush()
        return tenant

    async def assign_plan(self, *, tenant_id: uuid.UUID, plan_id: uuid.UUID) -> Tenant:
        tenant = await self.repository.get(tenant_id)
        plan = await self.plans.get(plan_id)
        tenant.plan_id = plan.id
        await self.repository.flush()
        return tenant

    async def delete(
        self, *, actor: Principal, tenant_id: uuid.UUID, cascade: bool
    ) -> TeardownAccepted | None:
        """Delete the tenant, or (`cascade`) tear its live workspaces down first.

        The row lock conflicts with the tenant lock every spawn takes, so no workspace is
        added between the check and the delete (or the mark). Like that lock it lets rows
        that refer to the tenant be written meanwhile: a worker holding one of its
        workspaces inserts an event, which must not wait for us while we wait for it.
        """
        tenant = await self.repository.get_locked(tenant_id, key_share=True)
        return await self.teardown.delete(kind=TENANT, parent=tenant, actor=actor, cascade=cascade)
