"""Workspaces through their whole life, carried out by a real worker and real drivers."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conftest import World
from factories import make_template
from polling import eventually
from provisioners.fake_orchestrator import FakeOrchestrator, ServedOrchestrator
from provisioners.fakes import AlwaysFailing
from spawnpoint.models import Job, Role
from workspaces.conftest import StartWorker, wait_for_state

LOCAL_COMMAND = (
    f"{sys.executable} -m http.server {{port}} --bind 127.0.0.1 --directory {{workspace_dir}}"
)


@pytest.fixture
def orchestrator(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServedOrchestrator]:
    monkeypatch.setenv("ORCHESTRATOR_POLL_INTERVAL_SECONDS", "0.02")
    with ServedOrchestrator(FakeOrchestrator(polls_to_running=1)) as served:
        yield served


async def lifecycle(
    client: httpx.AsyncClient, world: World, provisioner: str, spec: dict[str, Any]
) -> list[dict[str, Any]]:
    """Spawn, stop, start and delete; return the workspace as seen at each step."""
    org = await world.org()
    member = org.headers[Role.member]
    template = await make_template(
        world.database, org.tenant_id, provisioner=provisioner, spec=spec
    )
    spawned = await client.post("/api/spawn", headers=member, json={"template_id": str(template)})
    assert spawned.status_code == 202, spawned.text
    workspace_id = spawned.json()["workspace"]["id"]
    url = f"/api/workspaces/{workspace_id}"
    seen = [await wait_for_state(client, workspace_id, "running", member)]

    assert (await client.post(f"{url}/stop", headers=member)).status_code == 202
    seen.append(await wait_for_state(client, workspace_id, "stopped", member))
    repeat = await client.post(f"{url}/stop", headers=member)
    assert repeat.status_code == 202
    assert repeat.json()["job_id"] is None  # stopping a stopped workspace is harmless

    assert (await client.post(f"{url}/start", headers=member)).status_code == 202
    seen.append(await wait_for_state(client, workspace_id, "running", member))

    assert (await client.delete(url, headers=member)).status_code == 202
    seen.append(await wait_for_state(client, workspace_id, "deleted", member))

    events = (await client.get(f"{url}/events", headers=member)).json()["items"]
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        (None, "pending"),
        ("pending", "provisioning"),
        ("provisioning", "running"),
        ("running", "stopping"),
        ("stopping", "stopped"),
        ("stopped", "starting"),
        ("starting", "running"),
        ("running", "deleting"),
        ("deleting", "deleted"),
    ]
    assert {e["actor"] for e in events} == {"user", "system"}

    # The same steps left through the outbox, newest first, each in its change's commit.
    published = await client.get(
        "/api/events", params={"type": "workspace.", "limit": 200}, headers=member
    )
    assert published.status_code == 200, published.text
    mine = [e for e in published.json()["items"] if e["key"] == workspace_id]
    assert [(e["payload"]["from"], e["payload"]["to"]) for e in reversed(mine)] == [
        (e["from_state"], e["to_state"]) for e in events
    ]
    assert [e["type"] for e in reversed(mine)] == [f"workspace.{e['to_state']}" for e in events]
    return seen


async def test_dry_run_driver_lifecycle(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    await start_worker()
    running, stopped, _, deleted = await lifecycle(client, world, "dry-run", {})
    assert running["started_at"] is not None
    assert stopped["connection"] is None
    assert deleted["connection"] is None


async def test_local_driver_serves_http_while_running_only(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    await start_worker()
    org = await world.org()
    member = org.headers[Role.member]
    template = await make_template(
        world.database, org.tenant_id, provisioner="local", spec={"command": LOCAL_COMMAND}
    )
    spawned = await client.post("/api/spawn", headers=member, json={"template_id": str(template)})
    workspace_id = spawned.json()["workspace"]["id"]
    running = await wait_for_state(client, workspace_id, "running", member)
    workspace_url = running["connection"]["url"]
    async with httpx.AsyncClient() as browser:
        assert (await browser.get(workspace_url)).status_code == 200
        await client.post(f"/api/workspaces/{workspace_id}/stop", headers=member)
        await wait_for_state(client, workspace_id, "stopped", member)
        with pytest.raises(httpx.ConnectError):
            await browser.get(workspace_url)
        await client.post(f"/api/workspaces/{workspace_id}/start", headers=member)
        restarted = await wait_for_state(client, workspace_id, "running", member)
        assert (await browser.get(restarted["connection"]["url"])).status_code == 200
        await client.delete(f"/api/workspaces/{workspace_id}", headers=member)
        await wait_for_state(client, workspace_id, "deleted", member)
        with pytest.raises(httpx.ConnectError):
            await browser.get(restarted["connection"]["url"])


async def test_local_driver_lifecycle(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    await start_worker()
    running, _, restarted, _ = await lifecycle(client, world, "local", {"command": LOCAL_COMMAND})
    assert running["connection"]["url"].startswith("http://127.0.0.1:")
    assert restarted["connection"]["url"].startswith("http://127.0.0.1:")


async def test_orchestrator_driver_lifecycle(
    client: httpx.AsyncClient,
    world: World,
    start_worker: StartWorker,
    orchestrator: ServedOrchestrator,
) -> None:
    await start_worker(orchestrator_url=orchestrator.url)
    running, *_ = await lifecycle(client, world, "orchestrator", {"image": "scenario:1"})
    assert running["connection"]["scenario_id"]
    creates = orchestrator.fake.requests("POST")
    assert len(creates) == 1
    assert creates[0].headers["idempotency-key"]


async def test_always_failing_driver_retries_then_fails_with_its_error(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    failing = AlwaysFailing.configure(message="cloud is on fire")
    handle = await start_worker()
    handle.provisioners.add(failing, replace=True)
    org = await world.org()
    member = org.headers[Role.member]
    template = await make_template(world.database, org.tenant_id, provisioner=failing.name)
    spawned = await client.post("/api/spawn", headers=member, json={"template_id": str(template)})
    workspace_id = spawned.json()["workspace"]["id"]
    failed = await wait_for_state(client, workspace_id, "failed", member)
    assert "cloud is on fire" in failed["error"]
    job_id = uuid.UUID(spawned.json()["job_id"])

    async def job_failed() -> Job | None:
        # The workspace fails in the handler's transaction; the job's outcome is written
        # just after, in the worker's.
        async with world.database.transaction(write=False) as session:
            job = await session.get(Job, job_id)
            return job if job is not None and job.state == "failed" else None

    job = await eventually(job_failed, what="the job to be recorded as failed")
    assert job.attempts == job.max_attempts == 5
    assert "cloud is on fire" in (job.error or "")
    assert len([c for c in failing.calls if c[0] == "provision"]) == 5
    events = (await client.get(f"/api/workspaces/{workspace_id}/events", headers=member)).json()
    last = events["items"][-1]
    assert last["to_state"] == "failed"
    assert last["actor"] == "system"
    assert "cloud is on fire" in last["reason"]


async def test_impossible_transitions_are_409(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker
) -> None:
    await start_worker()
    org = await world.org()
    member = org.headers[Role.member]
    spawned = await client.post(
        "/api/spawn", headers=member, json={"template_id": str(org.template_id)}
    )
    workspace_id = spawned.json()["workspace"]["id"]
    await wait_for_state(client, workspace_id, "running", member)
    await client.delete(f"/api/workspaces/{workspace_id}", headers=member)
    await wait_for_state(client, workspace_id, "deleted", member)
    for action in ("start", "stop"):
        response = await client.post(f"/api/workspaces/{workspace_id}/{action}", headers=member)
        assert response.status_code == 409, action
        assert response.headers["content-type"] == "application/problem+json"
    again = await client.delete(f"/api/workspaces/{workspace_id}", headers=member)
    assert again.status_code == 202
    assert again.json()["job_id"] is None


async def test_members_act_on_their_own_workspaces_only(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    spawned = await client.post(
        "/api/spawn", headers=org.headers[Role.admin], json={"template_id": str(org.template_id)}
    )
    workspace_id = spawned.json()["workspace"]["id"]
    member_stop = await client.post(
        f"/api/workspaces/{workspace_id}/stop", headers=org.headers[Role.member]
    )
    assert member_stop.status_code == 403
    seen = await client.get(f"/api/workspaces/{workspace_id}", headers=org.headers[Role.viewer])
    assert seen.status_code == 200


async def test_workspace_list_filters(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    other_template = await make_template(world.database, org.tenant_id)
    mine = await client.post(
        "/api/spawn", headers=org.headers[Role.member], json={"template_id": str(org.template_id)}
    )
    await client.post(
        "/api/spawn", headers=org.headers[Role.admin], json={"template_id": str(other_template)}
    )
    viewer = org.headers[Role.viewer]
    everything = (await client.get("/api/workspaces", headers=viewer)).json()["items"]
    assert len(everything) == 2
    by_owner = await client.get(
        "/api/workspaces", headers=viewer, params={"owner": str(org.users[Role.member])}
    )
    assert [w["id"] for w in by_owner.json()["items"]] == [mine.json()["workspace"]["id"]]
    by_template = await client.get(
        "/api/workspaces", headers=viewer, params={"template": str(other_template)}
    )
    assert len(by_template.json()["items"]) == 1
    by_state = await client.get("/api/workspaces", headers=viewer, params={"state": "running"})
    assert by_state.json()["items"] == []
    bad_state = await client.get("/api/workspaces", headers=viewer, params={"state": "on-fire"})
    assert bad_state.status_code == 422


async def test_unknown_permit_is_404(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    for suffix in ("status", "connection"):
        response = await client.get(
            f"/api/v1/workspaces/no-such-permit/{suffix}", headers=org.headers[Role.viewer]
        )
        assert response.status_code == 404


async def test_jobs_for_a_workspace_are_recorded(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    spawned = await client.post(
        "/api/spawn", headers=org.headers[Role.member], json={"template_id": str(org.template_id)}
    )
    async with world.database.transaction(write=False) as session:
        job = (
            await session.execute(select(Job).where(Job.id == uuid.UUID(spawned.json()["job_id"])))
        ).scalar_one()
    assert job.type == "workspace.provision"
    assert job.payload == {"workspace_id": spawned.json()["workspace"]["id"]}
