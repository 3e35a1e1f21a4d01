"""Idle auto-stop and maximum lifetime, driven by the scheduler with a controlled clock."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from conftest import World
from factories import make_template
from spawnpoint.jobs.scheduler import Scheduler
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import Role
from spawnpoint.provisioners import ProvisionerRegistry
from spawnpoint.workspaces.sweeps import workspace_tasks
from workspaces.conftest import StartWorker, wait_for_state
from workspaces.processes import processes_mentioning


@pytest.fixture
async def scheduler(world: World) -> AsyncIterator[Scheduler]:
    """The workspace sweeps under a scheduler whose clock the test passes to `tick`."""
    tasks = workspace_tasks(
        provisioners=ProvisionerRegistry.from_entry_points(), settings=world.settings
    )
    scheduler = Scheduler(world.database, world.settings, tasks=tasks)
    yield scheduler
    # Ticks ran with future clocks; hand the leader lease back for the schedulers after us.
    await scheduler.release()


async def spawn_running(
    client: httpx.AsyncClient, world: World, spec: dict[str, object], provisioner: str = "dry-run"
) -> tuple[str, dict[str, str]]:
    org = await world.org()
    member = org.headers[Role.member]
    template = await make_template(
        world.database, org.tenant_id, provisioner=provisioner, spec=spec
    )
    spawned = await client.post("/api/spawn", headers=member, json={"template_id": str(template)})
    workspace_id = spawned.json()["workspace"]["id"]
    await wait_for_state(client, workspace_id, "running", member)
    return workspace_id, member


async def test_idle_workspaces_are_stopped_by_the_system(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker, scheduler: Scheduler
) -> None:
    await start_worker()
    workspace_id, member = await spawn_running(client, world, {"idle_timeout_minutes": 5})
    # Any earlier leader's lease (real time, seconds long) has expired two minutes from now.
    assert await scheduler.tick(utcnow() + timedelta(minutes=2))
    assert (await client.get(f"/api/workspaces/{workspace_id}", headers=member)).json()[
        "state"
    ] == "running"

    # Activity postpones the auto-stop.
    assert (
        await client.post(f"/api/workspaces/{workspace_id}/activity", headers=member)
    ).status_code == 204
    await scheduler.tick(utcnow() + timedelta(minutes=4))
    still = await client.get(f"/api/workspaces/{workspace_id}", headers=member)
    assert still.json()["state"] == "running"

    assert await scheduler.tick(utcnow() + timedelta(minutes=6))
    await wait_for_state(client, workspace_id, "stopped", member)
    events = (await client.get(f"/api/workspaces/{workspace_id}/events", headers=member)).json()
    auto = [e for e in events["items"] if e["to_state"] == "stopping"]
    assert len(auto) == 1
    assert auto[0]["actor"] == "system"
    assert auto[0]["actor_id"] is None
    assert "idle" in auto[0]["reason"]


async def test_workspaces_past_their_lifetime_are_deleted(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker, scheduler: Scheduler
) -> None:
    await start_worker()
    workspace_id, member = await spawn_running(client, world, {"max_lifetime_days": 2})
    workspace = (await client.get(f"/api/workspaces/{workspace_id}", headers=member)).json()
    assert workspace["expires_at"] is not None
    await scheduler.tick(utcnow() + timedelta(days=1))
    unchanged = await client.get(f"/api/workspaces/{workspace_id}", headers=member)
    assert unchanged.json()["state"] == "running"
    await scheduler.tick(utcnow() + timedelta(days=2, minutes=1))
    await wait_for_state(client, workspace_id, "deleted", member)
    events = (await client.get(f"/api/workspaces/{workspace_id}/events", headers=member)).json()
    deleting = [e for e in events["items"] if e["to_state"] == "deleting"]
    assert deleting[0]["actor"] == "system"
    assert deleting[0]["reason"] == "maximum lifetime reached"


async def test_workspaces_without_limits_are_left_alone(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker, scheduler: Scheduler
) -> None:
    await start_worker()
    workspace_id, member = await spawn_running(client, world, {})
    await scheduler.tick(utcnow() + timedelta(days=365))
    workspace = (await client.get(f"/api/workspaces/{workspace_id}", headers=member)).json()
    assert workspace["state"] == "running"


async def test_a_lost_local_process_fails_its_workspace_with_the_reason(
    client: httpx.AsyncClient, world: World, start_worker: StartWorker, scheduler: Scheduler
) -> None:
    await start_worker()
    command = (
        f"{sys.executable} -m http.server {{port}} --bind 127.0.0.1 --directory {{workspace_dir}}"
    )
    workspace_id, member = await spawn_running(client, world, {"command": command}, "local")
    await scheduler.tick(utcnow() + timedelta(minutes=1))
    alive = await client.get(f"/api/workspaces/{workspace_id}", headers=member)
    assert alive.json()["state"] == "running"

    [pid] = processes_mentioning(workspace_id)
    os.kill(pid, signal.SIGKILL)
    # The signal is delivered asynchronously: a tick right away may still see it running.
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if not processes_mentioning(workspace_id):
            break
        await asyncio.sleep(0.01)
    await scheduler.tick(utcnow() + timedelta(minutes=2))
    failed = await wait_for_state(client, workspace_id, "failed", member)
    assert "not running" in failed["error"]
    assert failed["connection"] is None
    events = (await client.get(f"/api/workspaces/{workspace_id}/events", headers=member)).json()
    assert events["items"][-1]["actor"] == "system"

    await client.delete(f"/api/workspaces/{workspace_id}", headers=member)
    await wait_for_state(client, workspace_id, "deleted", member)
