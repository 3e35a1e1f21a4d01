from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field


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
