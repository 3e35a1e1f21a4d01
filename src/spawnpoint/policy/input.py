"""Typed builders for the spawn policy input document (described in `spawnpoint.policy`).

Every model reads ORM rows and other objects by attribute (`from_attributes`), so
`PolicyPlan.model_validate(plan_row)` works; `SpawnPolicyInput.document()` is what the engines
take. Money and CPU are plain JSON numbers: Rego has no decimal type.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spawnpoint.templates.schemas import TemplateSpec

BudgetStatus = Literal["ok", "warning", "exceeded"]


class PolicyFacts(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True, extra="forbid")


class PolicyPlan(PolicyFacts):
    id: uuid.UUID
    name: str
    max_workspaces: int
    max_cpu: float
    max_memory_mb: int
    max_storage_gb: int
    max_concurrent_jobs: int
    max_jobs_per_day: int
    monthly_budget: float


class PolicyTenant(PolicyFacts):
    id: uuid.UUID
    name: str
    slug: str
    status: str = Field(description="`active` or `suspended`.")
    plan: PolicyPlan


class PolicyUser(PolicyFacts):
    id: uuid.UUID
    role: str = Field(description="viewer, member, publisher, admin or operator.")
    operator: bool = Field(description="Platform-operator rights.")


class PolicyTemplate(PolicyFacts):
    id: uuid.UUID
    name: str
    version: int = Field(description="The template version being spawned.")
    provisioner: str = Field(description="The driver of that version.")
    tenant_id: uuid.UUID | None = Field(description="Owner tenant; null for platform templates.")
    spec: TemplateSpec


class PolicyRequest(PolicyFacts):
    name: str | None = Field(None, description="Requested workspace name.")
    project_id: uuid.UUID | None = None
    external_ref: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool = False


class PolicyUsage(PolicyFacts):
    """What the tenant's live workspaces use before this spawn."""

    workspaces: int = Field(ge=0)
    cpu: float = Field(ge=0)
    memory_mb: int = Field(ge=0)
    storage_gb: int = Field(ge=0)


class PolicyBudgetLimit(PolicyFacts):
    """One budget in scope of the spawn, with what its scope spent this period."""

    id: uuid.UUID
    scope: Literal["tenant", "project", "user"]
    scope_id: uuid.UUID
    limit: float = Field(description="The monthly limit, in CURRENCY.")
    spent: float = Field(description="What the scope spent this period, to the cent.")
    ratio: float = Field(description="spent / limit.")
    warn_ratio: float
    hard_ratio: float
    state: BudgetStatus


class PolicyBudget(PolicyFacts):
    """The budgets in scope of the spawn: the tenant's, its project's and its user's."""

    status: BudgetStatus = Field(description="The worst state among `budgets`; ok when none.")
    period_start: datetime
    period_end: datetime
    time_zone: str = Field(description="The tenant's time zone, whose calendar month it is.")
    budgets: list[PolicyBudgetLimit] = Field(default_factory=list)


class SpawnPolicyInput(PolicyFacts):
    """The whole input document of a spawn decision."""

    action: Literal["spawn"] = "spawn"
    tenant: PolicyTenant
    user: PolicyUser
    template: PolicyTemplate
    request: PolicyRequest
    usage: PolicyUsage
    budget: PolicyBudget

    def document(self) -> dict[str, Any]:
        """The JSON document the engines evaluate (UUIDs as strings, numbers as numbers)."""
        return self.model_dump(mode="json")
