from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, WithJsonSchema

from spawnpoint.kit.schemas import Cents, InputSchema, Money, UpdateSchema


class GroupBy(StrEnum):
    user = "user"
    project = "project"
    workspace = "workspace"
    template = "template"
    day = "day"


class CostGroup(BaseModel):
    key: str | None = Field(
        description="The user, project, workspace or template id, or the UTC day "
        "(YYYY-MM-DD); null for costs with no user or project."
    )
    amount: Decimal = Field(description="The group's cost, rounded to the cent.")


class CostReport(BaseModel):
    """Costs of the hours that start in [since, until), grouped, with their total."""

    since: datetime
    until: datetime
    currency: str
    group_by: GroupBy | None
    total: Decimal = Field(description="Every matching cost, rounded to the cent.")
    items: list[CostGroup] = Field(description="One page of groups, in key order.")
    next_cursor: str | None


class BudgetScope(StrEnum):
    tenant = "tenant"
    project = "project"
    user = "user"


class BudgetState(StrEnum):
    ok = "ok"
    warning = "warning"
    exceeded = "exceeded"


Limit = Annotated[Money, Field(gt=0)]
Ratio = Annotated[
    Cents,
    Field(gt=0, le=10, max_digits=5, decimal_places=3, allow_inf_nan=False),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 10, "multipleOf": 0.001}),
]


class BudgetCreate(InputSchema):
    scope: BudgetScope
    scope_id: uuid.UUID | None = Field(
        None,
        description="The project or user the budget limits; for `tenant`, left out (or "
        "your tenant's id).",
    )
    limit: Limit = Field(description="The monthly limit, in CURRENCY.")
    warn_ratio: Ratio = Field(
        default=Decimal("0.8"),
        description="Share of the limit at which the budget warns.",
        json_schema_extra={"default": 0.8},
    )
    hard_ratio: Ratio = Field(
        default=Decimal("1.0"),
        description="Share of the limit at which the budget is exceeded; at least `warn_ratio`.",
        json_schema_extra={"default": 1.0},
    )


class BudgetUpdate(UpdateSchema):
    limit: Limit | None = Field(default=None)
    warn_ratio: Ratio | None = Field(default=None)
    hard_ratio: Ratio | None = Field(default=None)


class BudgetRead(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    scope: BudgetScope
    scope_id: uuid.UUID
    limit: Money
    warn_ratio: Cents
    hard_ratio: Cents
    currency: str
    time_zone: str = Field(description="The tenant's time zone: the period is a month there.")
    period_start: datetime = Field(
        description="Start of the current period: the calendar month in the tenant's time zone."
    )
    period_end: datetime
    spent: Cents = Field(description="What the scope's costs add up to this period, to the cent.")
    ratio: Cents = Field(description="`spent` / `limit`, to three places.")
    state: BudgetState
    remaining: Cents = Field(
        description="What may still be spent this period before `hard_ratio` x `limit`."
    )
    created_at: datetime
    updated_at: datetime
