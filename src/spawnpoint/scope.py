"""Tenant scoping: the single source of "which rows may this caller see"."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from spawnpoint.security import Principal


@dataclass(frozen=True, slots=True)
class TenantScope:
    tenant_id: uuid.UUID
    all_tenants: bool

    @classmethod
    def of(cls, principal: Principal) -> TenantScope:
        return cls(tenant_id=principal.tenant_id, all_tenants=principal.operator)
