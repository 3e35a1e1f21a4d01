from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Response, status
from sqlalchemy import Row

from spawnpoint.deps import AppSettings, RequirePublisher, RequireViewer, Scope, Session
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter
from spawnpoint.models import Template, TemplateVersion
from spawnpoint.teardown.endpoints import Cascade, teardown_delete, teardown_response
from spawnpoint.teardown.service import WorkspaceTeardown
from spawnpoint.templates.repository import TemplateRepository
from spawnpoint.templates.schemas import (
    TemplateCreate,
    TemplateRead,
    TemplateSpecRead,
    TemplateUpdate,
    TemplateVersionCreate,
    TemplateVersionRead,
)
from spawnpoint.templates.service import TemplateService
from spawnpoint.tenants.repository import TenantRepository

router = StrictRouter(prefix="/api/templates", tags=["templates"])


async def get_template_service(
    session: Session, scope: Scope, settings: AppSettings, request: Request
) -> TemplateService:
    return TemplateService(
        TemplateRepository(session, scope),
        TenantRepository(session, scope),
        provisioners=request.app.state.provisioners,
        default_provisioner=settings.provisioner,
        teardown=WorkspaceTeardown(session),
    )


Templates = Annotated[TemplateService, Depends(get_template_service)]
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]


def template_read(template: Template | Row[Any], spec: dict[str, Any]) -> TemplateRead:
    # Built without validation: the rows were validated when they were written, and
    # lists build fifty of these per request.
    return TemplateRead.model_construct(
        id=template.id,
        tenant_id=template.tenant_id,
        name=template.name,
        description=template.description,
        provisioner=template.provisioner,
        current_version=template.current_version,
        spec=TemplateSpecRead.model_validate(spec),
        created_at=template.created_at,
        updated_at=template.updated_at,
    )


def version_read(version: TemplateVersion) -> TemplateVersionRead:
    return TemplateVersionRead.model_validate(
        {
            "template_id": version.template_id,
            "version": version.version,
            "provisioner": version.provisioner,
            "spec": version.spec,
            "created_by": version.created_by,
            "created_at": version.created_at,
            "updated_at": version.created_at,
        }
    )


@router.get("", summary="List scenario templates")
async def list_templates(
    _: RequireViewer, templates: Templates, page: Pagination
) -> Page[TemplateRead]:
    """List the tenant's templates and the platform templates."""
    rows, cursor = await templates.list_page(params=page)
    # One validation of the whole page runs in pydantic's compiled core: cheaper than
    # fifty Python-level constructions.
    return Page[TemplateRead].model_validate(
        {"items": [row._asdict() for row in rows], "next_cursor": cursor}
    )


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create scenario template")
async def create_template(
    actor: RequirePublisher, templates: Templates, template_in: TemplateCreate
) -> TemplateRead:
    """Create a template and its first version."""
    platform = "tenant_id" in template_in.model_fields_set and template_in.tenant_id is None
    template, version = await templates.create(
        actor=actor, template_in=template_in, platform=platform
    )
    return template_read(template, version.spec)


@router.get("/{template_id}", summary="Retrieve scenario template")
async def read_template(
    _: RequireViewer, templates: Templates, template_id: uuid.UUID
) -> TemplateRead:
    """Retrieve one template with its current spec."""
    template, version = await templates.get(template_id=template_id)
    return template_read(template, version.spec)


@router.put("/{template_id}", summary="Update scenario template")
async def update_template(
    actor: RequirePublisher,
    templates: Templates,
    template_id: uuid.UUID,
    template_in: TemplateUpdate,
) -> TemplateRead:
    """Update a template; a changed spec becomes a new version."""
    template, version = await templates.update(
        actor=actor, template_id=template_id, template_in=template_in
    )
    return template_read(template, version.spec)


@teardown_delete(router, "/{template_id}", summary="Delete scenario template")
async def delete_template(
    actor: RequirePublisher,
    templates: Templates,
    template_id: uuid.UUID,
    cascade: Cascade = False,
) -> Response:
    """Delete a template and all its versions, once none of its workspaces is live."""
    started = await templates.delete(actor=actor, template_id=template_id, cascade=cascade)
    return teardown_response(started)


@router.get("/{template_id}/versions", summary="List template versions")
async def list_template_versions(
    _: RequireViewer, templates: Templates, template_id: uuid.UUID, page: Pagination
) -> Page[TemplateVersionRead]:
    """List a template's versions, oldest first."""
    items, cursor = await templates.list_versions(template_id=template_id, params=page)
    return Page(items=[version_read(v) for v in items], next_cursor=cursor)


@router.post(
    "/{template_id}/versions",
    openapi_extra={"x-audit-action": "template.publish"},
    status_code=status.HTTP_201_CREATED,
    summary="Create template version",
)
async def create_template_version(
    actor: RequirePublisher,
    templates: Templates,
    template_id: uuid.UUID,
    version_in: TemplateVersionCreate,
) -> TemplateVersionRead:
    """Publish a new immutable version and make it current."""
    version = await templates.create_version(
        actor=actor, template_id=template_id, version_in=version_in
    )
    return version_read(version)


@router.get("/{template_id}/versions/{version}", summary="Retrieve template version")
async def read_template_version(
    _: RequireViewer, templates: Templates, template_id: uuid.UUID, version: VersionNumber
) -> TemplateVersionRead:
    """Retrieve one immutable version of a template."""
    return version_read(await templates.get_version(template_id=template_id, version=version))
