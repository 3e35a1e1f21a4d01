from __future__ import annotations

from spawnpoint.kit.repository import ScopedRepository
from spawnpoint.models import Tenant


class TenantRepository(ScopedRepository[Tenant]):
    model = Tenant
    noun = "tenant"
    tenant_key = "id"
