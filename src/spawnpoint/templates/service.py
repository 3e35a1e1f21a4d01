from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Row

from spawnpoint.kit.errors import Forbidden, Unprocessable, field_error
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import Template, TemplateVersion
from spawnpoint.provisioners import ProvisionerRegistry
from spawnpoint.security import Principal
from spawnpoint.teardown.repository import TEMPLATE
from spawnpoint.teardown.schemas import TeardownAccepted
from spawnpoint.teardown.service import WorkspaceTeardown
from spawnpoint.templates.repository import TemplateRepository
from spawnpoint.templates.schemas import (
    TemplateCreate,
    TemplateSpec,
    TemplateUpdate,
    TemplateVersionCreate,
)
from spawnpoint.tenants.repository import TenantRepository
from spawnpoint.tenants.service import resolve_owner_tenant

TemplateRow = tuple[Template, TemplateVersion]


def check_runnable(registry: ProvisionerRegistry, provisioner: str, spec: TemplateSpec) -> None:
    if provisioner not in registry:
        known = ", ".join(registry.names())
        raise field_error("#/provisioner", f"Unknown provisioner; use one of: {known}.")
    if registry.get(provisioner).runs_host_commands and not spec.command:
        raise field_error("#/spec/command", f"The {provisioner} provisioner needs a command.")


def check_may_write(
    registry: ProvisionerRegistry,
    actor: Principal,
    *,
    tenant_id: uuid.UUID | None,
    provisioner: str,
) -> None:
    if actor.operator:
        return
    if tenant_id is None:
        raise Forbidden("Platform templates can be created and changed by operators only.")
    if provisioner in registry and registry.get(provisioner).runs_host_commands:
        raise Forbidden(
            f"The {provisioner} provisioner runs commands on the host; "
            "only operators may create or change its templates."
        )


def merge_spec(current: dict[str, Any], changes: dict[str, Any]) -> TemplateSpec:
    try:
        return TemplateSpec.model_validate({**current, **changes})
    except ValidationError as exc:
        errors = [
            {
                "pointer": "#/spec/" + "/".join(str(p) for p in err["loc"]),
                "detail": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors()
        ]
        raise Unprocessable("The request is invalid; see errors.", errors=errors) from exc


class TemplateService:
    def __init__(
        self,
        repository: TemplateRepository,
        tenants: TenantRepository,
        *,
        provisioners: ProvisionerRegistry,
        default_provisioner: str,
        teardown: WorkspaceTeardown,
    ) -> None:
        self.repository = repository
        self.tenants = tenants
        self.provisioners = provisioners
        self.default_provisioner = default_provisioner
        self.teardown = teardown

    async def list_page(self, *, params: PageParams) -> tuple[list[Row[Any]], str | None]:
        return await self.repository.page_listing(params)

    async def get(self, *, template_id: uuid.UUID) -> TemplateRow:
        return await self.repository.get_with_current(template_id)

    async def create(
        self, *, actor: Principal, template_in: TemplateCreate, platform: bool
    ) -> TemplateRow:
        tenant_id = (
            None
            if platform
            else await resolve_owner_tenant(self.tenants, actor, template_in.tenant_id)
        )
        provisioner = template_in.provisioner or self.default_provisioner
        check_may_write(self.provisioners, actor, tenant_id=tenant_id, provisioner=provisioner)
        check_runnable(self.provisioners, provisioner, template_in.spec)
        template = await self.repository.add(
            Template(
                tenant_id=tenant_id,
                name=template_in.name,
                description=template_in.description,
                provisioner=provisioner,
                current_version=1,
            )
        )
        version = await self._add_version(actor, template, provisioner, template_in.spec)
        return template, version

    async def _writable(self, actor: Principal, template_id: uuid.UUID) -> TemplateRow:
        template, version = await self.repository.get_with_current(template_id, for_update=True)
        check_may_write(
            self.provisioners, actor, tenant_id=template.tenant_id, provisioner=template.provisioner
        )
        return template, version

    async def _add_version(
        self, actor: Principal, template: Template, provisioner: str, spec: TemplateSpec
    ) -> TemplateVersion:
        return await self.repository.add_version(
            TemplateVersion(
                template_id=template.id,
                version=template.current_version,
                tenant_id=template.tenant_id,
                provisioner=provisioner,
                spec=spec.model_dump(mode="json"),
                created_by=actor.user_id,
            )
        )

    async def _new_version(
        self, actor: Principal, template: Template, provisioner: str, spec: TemplateSpec
    ) -> TemplateVersion:
        check_may_write(
            self.provisioners, actor, tenant_id=template.tenant_id, provisioner=provisioner
        )
        check_runnable(self.provisioners, provisioner, spec)
        template.provisioner = provisioner
        template.current_version += 1
        return await self._add_version(actor, template, provisioner, spec)

    async def update(
        self, *, actor: Principal, template_id: uuid.UUID, template_in: TemplateUpdate
    ) -> TemplateRow:
        template, version = await self._writable(actor, template_id)
        changes = template_in.changes()
        for field in ("name", "description"):
            if field in changes:
                setattr(template, field, changes[field])
        provisioner = changes.get("provisioner", template.provisioner)
        spec = merge_spec(version.spec, changes.get("spec", {}))
        # Compared as validated, so fields added to the spec since (with their defaults)
        # are no change.
        stored = merge_spec(version.spec, {}).model_dump(mode="json")
        if provisioner != template.provisioner or spec.model_dump(mode="json") != stored:
            version = await self._new_version(actor, template, provisioner, spec)
        await self.repository.flush()
        return template, version

    async def delete(
        self, *, actor: Principal, template_id: uuid.UUID, cascade: bool
    ) -> TeardownAccepted | None:
        """Delete the template, or (`cascade`) tear its live workspaces down first.

        Its deleted workspaces' rows go with it: they refer to it (ON DELETE RESTRICT).
        """
        await self.teardown.hold_spawns((await self.repository.get(template_id)).tenant_id)
        template, _ = await self._writable(actor, template_id)
        return await self.teardown.delete(
            kind=TEMPLATE, parent=template, actor=actor, cascade=cascade
        )

    async def list_versions(
        self, *, template_id: uuid.UUID, params: PageParams
    ) -> tuple[list[TemplateVersion], str | None]:
        await self.repository.get(template_id)
        return await self.repository.page_versions(template_id, params)

    async def get_version(self, *, template_id: uuid.UUID, version: int) -> TemplateVersion:
        await self.repository.get(template_id)
        return await self.repository.get_version(template_id, version)

    async def create_version(
        self, *, actor: Principal, template_id: uuid.UUID, version_in: TemplateVersionCreate
    ) -> TemplateVersion:
        template, _ = await self._writable(actor, template_id)
        provisioner = version_in.provisioner or template.provisioner
        return await self._new_version(actor, template, provisioner, version_in.spec)
