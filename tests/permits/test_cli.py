"""`spawnpoint events consume`: the consumer alone, in a process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import AUDIT_SIGNING_KEY, JWT_SECRET, World
from polling import eventually
from spawnpoint.models import WorkspaceState

from .conftest import Broker, new_permit, permit_event, workspace_of

SPAWNPOINT = str(Path(sys.executable).with_name("spawnpoint"))


async def test_events_consume_applies_permit_events_until_sigterm(
    world: World, broker: Broker, tmp_path: Path
) -> None:
    org = await world.org()
    await broker.declare()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WPS_", "RABBITMQ_"))},
        "DATABASE_URL": world.settings.sqlalchemy_url,
        "JWT_SECRET": JWT_SECRET,
        "AUDIT_SIGNING_KEY": AUDIT_SIGNING_KEY,
        "DATA_DIR": str(tmp_path),
        "WPS_RABBITMQ__URL": broker.url,
        "LOG_LEVEL": "info",
    }
    log = (tmp_path / "consume.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220  (started once; nothing waits on it here)
        [SPAWNPOINT, "events", "consume"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        permit = new_permit()
        await broker.publish(
            permit_event(
                "permit.approved",
                permit_id=permit,
                tenant_id=org.tenant_id,
                template_id=org.template_id,
            )
        )

        async def spawned() -> bool:
            return await workspace_of(world.database, org.tenant_id, permit) is not None

        await eventually(spawned, within=30, what="the permit's workspace")
        workspace = await workspace_of(world.database, org.tenant_id, permit)
        assert workspace is not None
        # No job worker runs in this process: the workspace waits for one.
        assert workspace.state == WorkspaceState.pending
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
