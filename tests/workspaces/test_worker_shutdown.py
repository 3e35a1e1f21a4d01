"""A stopping worker closes the provisioner drivers its handlers opened."""

from __future__ import annotations

import asyncio

import httpx

from conftest import World
from factories import make_template
from provisioners.fakes import FakeProvisioner
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.worker import run_worker_in_process
from spawnpoint.models import Role
from spawnpoint.provisioners import ProvisionerRegistry
from spawnpoint.workspaces.handlers import WorkspaceHandlers
from workspaces.conftest import wait_for_state


class Closable(FakeProvisioner):
    name = "closable"
    closed: int = 0

    async def aclose(self) -> None:
        type(self).closed += 1


async def test_a_stopped_worker_closes_its_drivers(
    client: httpx.AsyncClient,
    world: World,
    database: Database,
    backend_settings: Settings,
) -> None:
    driver = Closable.configure()
    provisioners = ProvisionerRegistry.from_entry_points()
    provisioners.add(driver)
    registry = HandlerRegistry()
    WorkspaceHandlers(provisioners).register(registry)

    async def failing_closer() -> None:
        raise RuntimeError("a plug-in that cannot close must not keep the drivers open")

    registry.on_close(failing_closer)
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker_in_process(
            database, backend_settings, registry, stop, poll_interval=0.05, scheduler=False
        )
    )
    try:
        org = await world.org()
        member = org.headers[Role.member]
        template = await make_template(world.database, org.tenant_id, provisioner=driver.name)
        spawned = await client.post(
            "/api/spawn", headers=member, json={"template_id": str(template)}
        )
        await wait_for_state(client, spawned.json()["workspace"]["id"], "running", member)
        assert driver.calls, "the worker never used the driver"
        assert driver.closed == 0
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
    assert driver.closed == 1
