from __future__ import annotations

import uuid

from spawnpoint.kit.errors import Conflict
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import Plan
from spawnpoint.plans.repository import PlanRepository
from spawnpoint.plans.schemas import PlanCreate, PlanUpdate


class PlanService:
    def __init__(self, repository: PlanRepository) -> None:
        self.repository = repository

    async def list_page(self, *, params: PageParams) -> tuple[list[Plan], str | None]:
        return await self.repository.page(params)

    async def get(self, *, plan_id: uuid.UUID) -> Plan:
        return await self.repository.get(plan_id)

    async def create(self, *, plan_in: PlanCreate) -> Plan:
        return await self.repository.add(Plan(**plan_in.model_dump()))

    async def update(self, *, plan_id: uuid.UUID, plan_in: PlanUpdate) -> Plan:
        plan = await self.repository.get(plan_id)
        for field, value in plan_in.changes().items():
            setattr(plan, field, value)
        await self.repository.flush()
        return plan

    async def delete(self, *, plan_id: uuid.UUID) -> None:
        plan = await self.repository.get(plan_id)
        if await self.repository.in_use(plan_id):
            raise Conflict("The plan is still assigned to a tenant; reassign the tenants first.")
        await self.repository.delete(plan)
