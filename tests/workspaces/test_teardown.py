"""Deleting a tenant, project, user or template never orphans its workspaces.

With live workspaces the delete answers 409 naming them; `?cascade=true` moves them
through `deleting` with destroy jobs (202), and the finisher removes the object once the
worker has deleted them.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import httpx
from sqlalchemy import select

from conftest import World
from factories import make_project, make_template, make_user, plant_workspace
from spawnpoint.db import Database
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import Job, Role, Workspace, WorkspaceEvent, WorkspaceState
from spawnpoint.teardown.service import PendingDeletions
from workspaces.conftest import DEADLINE_SECONDS, StartWorker, wait_for_state
from workspaces.processes import processes_mentioning

S = WorkspaceState
PROBLEM = "application/problem+json"


async def states(database: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    async with database.transaction(write=False) as session:
        rows = await session.execute(
            select(Workspace.id, Workspace.state).where(Workspace.id.in_(ids))
        )
        return {row.id: row.state for row in rows}


async def wait_deleted(database: Database, ids: list[uuid.UUID]) -> None:
    end = time.monotonic() + DEADLINE_SECONDS
    while True:
        found = await states(database, ids)
        if all(state == S.deleted for state in found.values()):
            return
        assert time.monotonic() < end, f"never deleted: {found}"
        await asyncio.sleep(0.05)


async def finish(database: Database) -> int:
    """Run the finisher once, as the scheduler would."""
    async with database.transaction(write=True) as session:
        return await PendingDeletions()(session, utcnow())


async def destroy_jobs(database: Database, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    async with database.transaction(write=False) as session:
        jobs = await session.execute(
            select(Job.id, Job.payload).where(Job.type == "workspace.destroy")
        )
        wanted = {str(i) for i in ids}
        return sorted(job.id for job in jobs if job.payload.get("workspace_id") in wanted)


def assert_names_live(response: httpx.Response, ids: list[uuid.UUID]) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "urn:spawnpoint:problem:live-workspaces"
    assert problem["live_workspaces"] == len(ids)
    assert sorted(problem["workspace_ids"]) == sorted(str(i) for i in ids)


async def test_a_tenant_is_deleted_only_once_its_workspaces_are_gone(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    org = await world.org()
    url = f"/api/tenants/{org.tenant_id}"
    # A failed workspace may still hold infrastructure: it counts. A deleted one does not.
    live = [
        await plant_workspace(world.database, org, S.running),
        await plant_workspace(world.database, org, S.failed),
        await plant_workspace(world.database, org, S.stopped),
    ]
    await plant_workspace(world.database, org, S.deleted)

    assert_names_live(await client.delete(url, headers=world.dev), live)
    assert (await client.get(url, headers=world.dev)).status_code == 200

    started = await client.delete(url, headers=world.dev, params={"cascade": "true"})
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["live_workspaces"] == 3
    assert {w["id"] for w in body["workspaces"]} == {str(i) for i in live}
    assert {w["state"] for w in body["workspaces"]} == {"deleting"}
    job_ids = sorted(uuid.UUID(w["job_id"]) for w in body["workspaces"])
    assert await destroy_jobs(world.database, live) == job_ids
    async with world.database.transaction(write=False) as session:
        events = list(
            await session.scalars(
                select(WorkspaceEvent).where(
                    WorkspaceEvent.workspace_id.in_(live), WorkspaceEvent.to_state == S.deleting
                )
            )
        )
    assert len(events) == 3
    assert {(e.actor, e.reason) for e in events} == {("user", "tenant deleted")}

    # Marked: no new spawn, and a repeated cascade duplicates nothing.
    member = org.headers[Role.member]
    spawn = await client.post(
        "/api/spawn", headers=member, json={"template_id": str(org.template_id)}
    )
    assert spawn.status_code == 409, spawn.text
    assert "tenant is being deleted" in spawn.json()["detail"]
    again = await client.delete(url, headers=world.dev, params={"cascade": "true"})
    assert again.status_code == 202
    assert again.json()["deletion_requested_at"] == body["deletion_requested_at"]
    assert {w["job_id"] for w in again.json()["workspaces"]} == {None}
    assert await destroy_jobs(world.database, live) == job_ids

    await finish(world.database)
    assert (await client.get(url, headers=world.dev)).status_code == 200

    await start_worker()
    await wait_deleted(world.database, live)
    assert await finish(world.database) >= 1
    assert (await client.get(url, headers=world.dev)).status_code == 404
    assert await states(world.database, live) == {}


async def test_cascade_stops_the_tenants_local_processes(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    await start_worker()
    org = await world.org()
    member = org.headers[Role.member]
    command = (
        f"{sys.executable} -m http.server {{port}} --bind 127.0.0.1 --directory {{workspace_dir}}"
    )
    template = await make_template(
        world.database, org.tenant_id, provisioner="local", spec={"command": command}
    )
    spawned = await client.post("/api/spawn", headers=member, json={"template_id": str(template)})
    workspace_id = spawned.json()["workspace"]["id"]
    await wait_for_state(client, workspace_id, "running", member)
    assert processes_mentioning(workspace_id)

    url = f"/api/tenants/{org.tenant_id}"
    assert (await client.delete(url, headers=world.dev)).status_code == 409
    started = await client.delete(url, headers=world.dev, params={"cascade": "true"})
    assert started.status_code == 202, started.text

    await wait_for_state(client, workspace_id, "deleted", member)
    assert processes_mentioning(workspace_id) == []
    await finish(world.database)
    assert (await client.get(url, headers=world.dev)).status_code == 404


async def test_a_project_waits_for_its_workspaces(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    org = await world.org()
    admin = org.headers[Role.admin]
    project = await make_project(world.database, org.tenant_id)
    inside = await plant_workspace(world.database, org, S.running, project_id=project)
    await plant_workspace(world.database, org, S.running)  # outside the project: untouched
    url = f"/api/projects/{project}"

    assert_names_live(await client.delete(url, headers=admin), [inside])
    started = await client.delete(url, headers=admin, params={"cascade": "true"})
    assert started.status_code == 202, started.text
    assert [w["id"] for w in started.json()["workspaces"]] == [str(inside)]
    spawn = await client.post(
        "/api/spawn",
        headers=org.headers[Role.member],
        json={"template_id": str(org.template_id), "project_id": str(project)},
    )
    assert spawn.status_code == 409
    assert "project is being deleted" in spawn.json()["detail"]

    await start_worker()
    await wait_deleted(world.database, [inside])
    await finish(world.database)
    assert (await client.get(url, headers=admin)).status_code == 404
    async with world.database.transaction(write=False) as session:
        kept = await session.scalar(select(Workspace.project_id).where(Workspace.id == inside))
    assert kept is None  # the deleted workspace's row stays, without its project


async def test_a_user_who_owns_workspaces_waits_for_them_and_signs_in_no_more(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    org = await world.org()
    admin = org.headers[Role.admin]
    owner = await make_user(world.database, org.tenant_id, role=Role.member)
    owned = await plant_workspace(world.database, org, S.stopped, owner_id=owner)
    url = f"/api/users/{owner}"

    assert_names_live(await client.delete(url, headers=admin), [owned])
    assert (await client.get("/api/workspaces", headers=world.bearer(owner))).status_code == 200
    started = await client.delete(url, headers=admin, params={"cascade": "true"})
    assert started.status_code == 202, started.text
    assert (await client.get(url, headers=admin)).json()["status"] == "disabled"
    assert (await client.get("/api/workspaces", headers=world.bearer(owner))).status_code == 401
    enabled = await client.put(url, headers=admin, json={"status": "active"})
    assert enabled.status_code == 409
    assert "being deleted" in enabled.json()["detail"]

    await start_worker()
    await wait_deleted(world.database, [owned])
    await finish(world.database)
    assert (await client.get(url, headers=admin)).status_code == 404


async def test_a_template_waits_for_its_workspaces_and_takes_their_deleted_rows(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    org = await world.org()
    publisher = org.headers[Role.publisher]
    template = await make_template(world.database, org.tenant_id)
    live = await plant_workspace(world.database, org, S.pending, template_id=template)
    gone = await plant_workspace(world.database, org, S.deleted, template_id=template)
    url = f"/api/templates/{template}"

    assert_names_live(await client.delete(url, headers=publisher), [live])
    started = await client.delete(url, headers=publisher, params={"cascade": "true"})
    assert started.status_code == 202, started.text
    spawn = await client.post(
        "/api/spawn", headers=org.headers[Role.member], json={"template_id": str(template)}
    )
    assert spawn.status_code == 409
    assert "template is being deleted" in spawn.json()["detail"]

    await start_worker()
    await wait_deleted(world.database, [live])
    await finish(world.database)
    assert (await client.get(url, headers=publisher)).status_code == 404
    # workspaces.template_id is ON DELETE RESTRICT: the deleted rows went first.
    assert await states(world.database, [live, gone]) == {}


async def test_another_tenants_workspaces_are_counted_but_never_named(
    client: httpx.AsyncClient, world: World
) -> None:
    """An operator may spawn in one tenant from another's template; its ids stay hidden."""
    owner, other = await world.org(), await world.org()
    template = await make_template(world.database, owner.tenant_id)
    mine = await plant_workspace(world.database, owner, template_id=template)
    theirs = await plant_workspace(world.database, other, template_id=template)
    url = f"/api/templates/{template}"
    refused = await client.delete(url, headers=owner.headers[Role.publisher])
    assert refused.status_code == 409
    assert refused.json()["live_workspaces"] == 2
    assert refused.json()["workspace_ids"] == [str(mine)]
    started = await client.delete(
        url, headers=owner.headers[Role.publisher], params={"cascade": "true"}
    )
    assert started.status_code == 202
    assert started.json()["live_workspaces"] == 2
    assert [w["id"] for w in started.json()["workspaces"]] == [str(mine)]
    operator = await client.delete(url, headers=world.dev)
    assert sorted(operator.json()["workspace_ids"]) == sorted([str(mine), str(theirs)])


async def test_without_live_workspaces_delete_is_immediate(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    admin = org.headers[Role.admin]
    only_deleted = await make_template(world.database, org.tenant_id)
    await plant_workspace(world.database, org, S.deleted, template_id=only_deleted)
    unused = await make_template(world.database, org.tenant_id)
    project = await make_project(world.database, org.tenant_id)

    deletes = [
        (f"/api/templates/{only_deleted}", {}),
        (f"/api/templates/{unused}", {"cascade": "true"}),
        (f"/api/projects/{project}", {"cascade": "true"}),
        (f"/api/tenants/{org.tenant_id}", {"cascade": "true"}),
    ]
    for url, params in deletes:
        response = await client.delete(
            url, headers=world.dev if "tenants" in url else admin, params=params
        )
        assert response.status_code == 204, (url, response.text)
        assert response.content == b""
        assert (await client.get(url, headers=world.dev)).status_code == 404


async def test_the_delete_routes_document_cascade(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for path in (
        "/api/tenants/{tenant_id}",
        "/api/projects/{project_id}",
        "/api/users/{user_id}",
        "/api/templates/{template_id}",
    ):
        operation = schema["paths"][path]["delete"]
        [cascade] = [p for p in operation["parameters"] if p["name"] == "cascade"]
        assert cascade["in"] == "query"
        assert cascade["schema"]["type"] == "boolean"
        assert cascade["schema"]["default"] is False
        assert {"202", "204", "409"} <= set(operation["responses"])
