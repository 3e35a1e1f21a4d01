"""A worker killed with SIGKILL in the middle of provisioning loses nothing.

The workspace's program (a small web server) waits for a gate file before it listens, so
the test can kill the first worker while provisioning is certainly under way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx

from conftest import World
from factories import make_template
from spawnpoint.config import Settings
from spawnpoint.models import Role
from workspaces.conftest import wait_for_state
from workspaces.processes import processes_mentioning

T = TypeVar("T")

GATED_SERVER = """
import functools, http.server, os, sys, time
port, directory, gate = int(sys.argv[1]), sys.argv[2], sys.argv[3]
deadline = time.monotonic() + 120
while not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.05)
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"""


async def eventually(check: Callable[[], Awaitable[T | None]], *, within: float, what: str) -> T:
    end = time.monotonic() + within
    while time.monotonic() < end:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def start_worker(settings: Settings, log: Path, *options: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DATABASE_URL": settings.sqlalchemy_url,
        "DATA_DIR": str(settings.data_dir),
        "ENVIRONMENT": "development",
        "LOCAL_READY_TIMEOUT_SECONDS": "60",
    }
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("spawnpoint")),
            "worker",
            "--lease-seconds",
            "2",
            "--poll-interval",
            "0.1",
            *options,
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=out,
        )


async def test_sigkilled_worker_mid_provisioning_ends_running_once_with_one_process(
    client: httpx.AsyncClient, world: World, backend_settings: Settings, tmp_path: Path
) -> None:
    script = tmp_path / "gated_server.py"
    script.write_text(GATED_SERVER)
    gate = tmp_path / "gate"
    org = await world.org()
    member = org.headers[Role.member]
    template = await make_template(
        world.database,
        org.tenant_id,
        provisioner="local",
        spec={"command": f"{sys.executable} {script} {{port}} {{workspace_dir}} {gate}"},
    )
    spawned = await client.post("/api/spawn", headers=member, json={"template_id": str(template)})
    workspace_id = spawned.json()["workspace"]["id"]

    first = await start_worker(backend_settings, tmp_path / "first.log", "--no-scheduler")
    second: asyncio.subprocess.Process | None = None
    try:
        await wait_for_state(client, workspace_id, "provisioning", member)
        await eventually(
            lambda: asyncio.to_thread(processes_mentioning, workspace_id),
            within=30,
            what="the workspace process to start",
        )
    finally:
        first.kill()
        await first.wait()
    assert first.returncode == -signal.SIGKILL

    try:
        gate.touch()
        second = await start_worker(
            backend_settings, tmp_path / "second.log", "--rescue-interval", "0.2"
        )
        running = await wait_for_state(client, workspace_id, "running", member, deadline=60)
        async with httpx.AsyncClient() as browser:
            assert (await browser.get(running["connection"]["url"])).status_code == 200
        assert len(processes_mentioning(workspace_id)) == 1
        events = await client.get(f"/api/workspaces/{workspace_id}/events", headers=member)
        transitions = [(e["from_state"], e["to_state"]) for e in events.json()["items"]]
        assert transitions == [
            (None, "pending"),
            ("pending", "provisioning"),
            ("provisioning", "running"),
        ]
        await client.delete(f"/api/workspaces/{workspace_id}", headers=member)
        await wait_for_state(client, workspace_id, "deleted", member)
        assert processes_mentioning(workspace_id) == []
    finally:
        if second is not None:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), 30)
        for pid in processes_mentioning(workspace_id):
            os.kill(pid, signal.SIGKILL)
