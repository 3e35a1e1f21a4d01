from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request, status
from fastapi.responses import JSONResponse, Response

from spawnpoint.deps import (
    DB,
    CurrentPrincipal,
    RequireMember,
    RequireViewer,
    Scope,
    Session,
)
from spawnpoint.kit.idempotency import accepted_once
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter
from spawnpoint.models import Job, Workspace, WorkspaceState
from spawnpoint.scope import TenantScope
from spawnpoint.templates.repository import TemplateRepository
from spawnpoint.workspaces.alive import lifecycle_of
from spawnpoint.workspaces.repository import WorkspaceRepository
from spawnpoint.workspaces.schemas import (
    ActivitySource,
    BudgetStop,
    PermitConnection,
    PermitStatus,
    SpawnAccepted,
    SpawnCheck,
    SpawnRequest,
    WorkspaceActionAccepted,
    WorkspaceEventRead,
    WorkspaceRead,
)
from spawnpoint.workspaces.service import WorkspaceService
from spawnpoint.workspaces.status_cache import (
    Document,
    StatusKeeper,
    documents_of,
    status_cache_of,
)

PermitId = Annotated[
    str, Path(min_length=1, max_length=200, description="The workspace's `external_ref`.")
]
router = StrictRouter(tags=["workspaces"])


async def get_workspace_service(
    session: Session, principal: CurrentPrincipal, request: Request
) -> WorkspaceService:
    # The scope, policy and settings are read here rather than as dependencies of their
    # own: each dependency costs every request that uses this one (polls included) a
    # round of FastAPI's dependency solving.
    state = request.app.state
    scope = TenantScope.of(principal)
    return WorkspaceService(
        WorkspaceRepository(session, scope),
        TemplateRepository(session, scope),
        policy=state.policy,
        currency=state.settings.currency,
    )


Workspaces = Annotated[WorkspaceService, Depends(get_workspace_service)]


class Console:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    def url(self, workspace_id: uuid.UUID) -> str:
        return f"{self.base}/workspaces/{workspace_id}"

    def read(self, workspace: Workspace, budget_stop: BudgetStop | None = None) -> WorkspaceRead:
        """The workspace as read, with its `lifecycle` (`budget_stop` found by the caller:
        only running workspaces have one)."""
        fields = {
            name: getattr(workspace, name)
            for name in WorkspaceRead.model_fields
            if name not in ("console_url", "lifecycle")
        }
        fields["console_url"] = self.url(workspace.id)
        fields["lifecycle"] = lifecycle_of(workspace, budget_stop)
        return WorkspaceRead.model_validate(fields)


@functools.cache
def _console(base_url: str) -> Console:
    return Console(base_url)


async def get_console(request: Request) -> Console:
    return _console(request.app.state.settings.console_base_url)


ConsoleLinks = Annotated[Console, Depends(get_console)]


def accepted(console: Console, workspace: Workspace, job: Job | None) -> WorkspaceActionAccepted:
    return WorkspaceActionAccepted(
        workspace=console.read(workspace), job_id=job.id if job else None
    )


@router.post(
    "/api/spawn",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Spawn scenario with OPA enforcement",
    openapi_extra={"x-audit-action": "workspace.spawn"},
    response_model=SpawnAccepted | SpawnCheck,
    responses={
        200: {"model": SpawnCheck, "description": "dry_run=true: what a spawn would decide."},
        403: {"description": "The policy denied the spawn; `reasons` lists why."},
        429: {"description": "A plan quota would be exceeded; names the limit and usage."},
        503: {"description": "The policy engine could not answer; nothing was created."},
    },
)
async def spawn(
    actor: RequireMember,
    workspaces: Workspaces,
    console: ConsoleLinks,
    spawn_in: SpawnRequest,
    request: Request,
    dry_run: Annotated[bool, Query(description="Run every check, create nothing.")] = False,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> Any:
    """Check quotas and policy, then create a pending workspace and its provisioning job."""
    if dry_run:
        check = await workspaces.check(actor=actor, spawn_in=spawn_in)
        return JSONResponse(check.model_dump(mode="json"), status_code=status.HTTP_200_OK)

    async def accept(final: bool) -> dict[str, Any]:
        # Without a key nothing more is written: the unit of work may commit with the rows.
        workspace, job_id = await workspaces.spawn(actor=actor, spawn_in=spawn_in, final=final)
        return SpawnAccepted(
            workspace=console.read(workspace), job_id=job_id, console_url=console.url(workspace.id)
        ).model_dump(mode="json")

    return await accepted_once(
        workspaces.session,
        tenant_id=actor.tenant_id,
        key=idempotency_key,
        request=request,
        document=spawn_in.model_dump(mode="json"),
        accept=accept,
    )


@router.get("/api/workspaces", summary="List workspaces")
async def list_workspaces(
    _: RequireViewer,
    workspaces: Workspaces,
    console: ConsoleLinks,
    page: Pagination,
    state: Annotated[WorkspaceState | None, Query()] = None,
    owner: Annotated[uuid.UUID | None, Query(description="Owner's user id.")] = None,
    template: Annotated[uuid.UUID | None, Query(description="Template id.")] = None,
    project: Annotated[uuid.UUID | None, Query(description="Project id.")] = None,
) -> Page[WorkspaceRead]:
    """List the tenant's workspaces, newest last, filtered by state, owner, template, project."""
    items, cursor = await workspaces.page(
        page, state=state, owner_id=owner, template_id=template, project_id=project
    )
    stops = await workspaces.budget_stops(items)
    return Page(items=[console.read(w, stops.get(w.id)) for w in items], next_cursor=cursor)


@router.get(
    "/api/workspaces/{workspace_id}", summary="Retrieve workspace", response_model=WorkspaceRead
)
async def read_workspace(
    _: RequireViewer, workspaces: Workspaces, console: ConsoleLinks, workspace_id: uuid.UUID
) -> Response:
    """Retrieve one workspace with its state, connection and lifecycle."""
    workspace = await workspaces.read(workspace_id)
    stops = await workspaces.budget_stops([workspace])
    # Rendered here: the document is built and validated once, not again by the route
    # (what every client polls for costs its serialisation once).
    read = console.read(workspace, stops.get(workspace.id))
    return Response(read.model_dump_json(), media_type="application/json")


@router.post(
    "/api/workspaces/{workspace_id}/start",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Start workspace",
    responses={429: {"description": "A plan quota would be exceeded; names the limit and usage."}},
)
async def start_workspace(
    actor: RequireMember, workspaces: Workspaces, console: ConsoleLinks, workspace_id: uuid.UUID
) -> WorkspaceActionAccepted:
    """Start a stopped workspace (within the plan's quotas)."""
    return accepted(console, *await workspaces.start(actor=actor, workspace_id=workspace_id))


@router.post(
    "/api/workspaces/{workspace_id}/stop",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Stop workspace",
)
async def stop_workspace(
    actor: RequireMember, workspaces: Workspaces, console: ConsoleLinks, workspace_id: uuid.UUID
) -> WorkspaceActionAccepted:
    """Stop a running workspace; stopping a stopped one is harmless."""
    return accepted(console, *await workspaces.stop(actor=actor, workspace_id=workspace_id))


@router.delete(
    "/api/workspaces/{workspace_id}",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Delete workspace",
)
async def delete_workspace(
    actor: RequireMember, workspaces: Workspaces, console: ConsoleLinks, workspace_id: uuid.UUID
) -> WorkspaceActionAccepted:
    """Tear a workspace down and remove it."""
    return accepted(console, *await workspaces.delete(actor=actor, workspace_id=workspace_id))


@router.post(
    "/api/workspaces/{workspace_id}/activity",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Record workspace activity",
)
async def record_activity(
    actor: RequireMember,
    workspaces: Workspaces,
    workspace_id: uuid.UUID,
    source: Annotated[
        ActivitySource,
        Query(description="What saw the activity: `heartbeat` (default), `connection` or `api`."),
    ] = "heartbeat",
) -> None:
    """Record that the workspace is in use, postponing its idle auto-stop."""
    await workspaces.touch(actor=actor, workspace_id=workspace_id, source=source)


@router.get("/api/workspaces/{workspace_id}/events", summary="List workspace events")
async def list_workspace_events(
    _: RequireViewer, workspaces: Workspaces, workspace_id: uuid.UUID, page: Pagination
) -> Page[WorkspaceEventRead]:
    """List every lifecycle transition of a workspace: from, to, actor, reason, time."""
    items, cursor = await workspaces.events(workspace_id, page)
    return Page(items=[WorkspaceEventRead.model_validate(e) for e in items], next_cursor=cursor)


async def get_status_keeper(database: DB) -> StatusKeeper | None:
    return status_cache_of(database)


Keeper = Annotated[StatusKeeper | None, Depends(get_status_keeper)]


async def permit_document(
    workspaces: WorkspaceService,
    keeper: StatusKeeper | None,
    scope: TenantScope,
    permit_id: str,
    which: Document,
) -> Response:
    """A permit document: from Redis when it holds it, else from the database (then cached).

    Both answers are the bytes `documents_of` renders. The key is the caller's own tenant's,
    as `by_permit` reads the caller's own tenant only, operators included.
    """
    if keeper is not None:
        cached = await keeper.read(scope.tenant_id, permit_id, which)
        if cached is not None:
            return Response(cached, media_type="application/json")
    documents = documents_of(await workspaces.by_permit(permit_id))
    if keeper is not None:
        await keeper.fill(documents)
    return Response(documents.document(which), media_type="application/json")


@router.get(
    "/api/v1/workspaces/{permit_id}/status",
    summary="Workspace status by permit",
    response_model=PermitStatus,
)
async def permit_status(
    _: RequireViewer, workspaces: Workspaces, keeper: Keeper, scope: Scope, permit_id: PermitId
) -> Response:
    """Runtime status of the workspace spawned for a permit (its `external_ref`)."""
    return await permit_document(workspaces, keeper, scope, permit_id, "status")


@router.get(
    "/api/v1/workspaces/{permit_id}/connection",
    summary="Workspace connection by permit",
    response_model=PermitConnection,
)
async def permit_connection(
    _: RequireViewer, workspaces: Workspaces, keeper: Keeper, scope: Scope, permit_id: PermitId
) -> Response:
    """Connection details of the workspace spawned for a permit (its `external_ref`)."""
    return await permit_document(workspaces, keeper, scope, permit_id, "connection")
