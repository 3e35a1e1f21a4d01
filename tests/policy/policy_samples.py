"""A typical spawn's policy input, built with the real builders, and ways to vary it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from spawnpoint.policy import (
    PolicyBudget,
    PolicyBudgetLimit,
    PolicyPlan,
    PolicyRequest,
    PolicyTemplate,
    PolicyTenant,
    PolicyUsage,
    PolicyUser,
    SpawnPolicyInput,
)
from spawnpoint.templates.schemas import TemplateSpec

TENANT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")
BUDGET_ID = uuid.UUID("00000000-0000-0000-0000-0000000000b1")


def sample_input() -> SpawnPolicyInput:
    """A member of an active tenant spawns an unrestricted template well within its plan."""
    return SpawnPolicyInput(
        tenant=PolicyTenant(
            id=TENANT_ID,
            name="Acme",
            slug="acme",
            status="active",
            plan=PolicyPlan(
                id=uuid.UUID("00000000-0000-0000-0000-000000000010"),
                name="team",
                max_workspaces=5,
                max_cpu=8,
                max_memory_mb=16384,
                max_storage_gb=100,
                max_concurrent_jobs=4,
                max_jobs_per_day=100,
                monthly_budget=500,
            ),
        ),
        user=PolicyUser(
            id=uuid.UUID("00000000-0000-0000-0000-0000000000aa"), role="member", operator=False
        ),
        template=PolicyTemplate(
            id=uuid.UUID("00000000-0000-0000-0000-000000000100"),
            name="jupyter",
            version=3,
            provisioner="local",
            tenant_id=TENANT_ID,
            spec=TemplateSpec(
                command="jupyter lab --port {port}",
                cpu=1.5,
                memory_mb=2048,
                storage_gb=10,
                ports=[8888],
                env={"MODE": "lab"},
                idle_timeout_minutes=60,
                hourly_cost=0.12,
            ),
        ),
        request=PolicyRequest(name="analysis", parameters={"kernel": "python3"}),
        usage=PolicyUsage(workspaces=2, cpu=4, memory_mb=8192, storage_gb=20),
        budget=PolicyBudget(
            status="ok",
            period_start=datetime(2026, 12, 1, tzinfo=UTC),
            period_end=datetime(2027, 1, 1, tzinfo=UTC),
            time_zone="UTC",
            budgets=[
                PolicyBudgetLimit(
                    id=BUDGET_ID,
                    scope="tenant",
                    scope_id=TENANT_ID,
                    limit=500,
                    spent=120.5,
                    ratio=0.241,
                    warn_ratio=0.8,
                    hard_ratio=1,
                    state="ok",
                )
            ],
        ),
    )


def document(**changes: dict[str, Any]) -> dict[str, Any]:
    """The sample document with sections changed, e.g. `document(user={"role": "admin"})`.

    Each keyword names a top-level section; its dict is merged into that section, one level
    deep for nested objects (`template={"spec": {"restricted": True}}` keeps the other spec
    fields).
    """
    doc = sample_input().document()
    for section, values in changes.items():
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(doc[section].get(key), dict):
                doc[section][key] = {**doc[section][key], **value}
            else:
                doc[section][key] = value
    return doc
