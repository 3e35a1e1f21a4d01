"""ORM tables, one module per aggregate; importing this package registers them all."""

from spawnpoint.models.templates import Template, TemplateVersion
from spawnpoint.models.tenancy import Plan, Project, Role, Tenant, TenantStatus, User, UserStatus

__all__ = [
    "Plan",
    "Project",
    "Role",
    "Template",
    "TemplateVersion",
    "Tenant",
    "TenantStatus",
    "User",
    "UserStatus",
]
