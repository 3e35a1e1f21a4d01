"""PostgreSQL restarted in the middle of 300 spawns: 503s while it is down, then recovery.

Real processes throughout: the API (`spawnpoint serve --no-worker`) and two workers
(`spawnpoint worker`) on the private server, which crashes (`pg_ctl stop -m immediate`) in
the middle of a burst of spawns, stays down while spawns keep arriving, then starts again
(with crash recovery). A reader polls the API all along, to time the recovery closely.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from chaos.deployment import (
    Deployment,
    Outcome,
    all_running_once,
    paced_spawns,
    provision_jobs,
    request_once,
    spawn_once,
)
from spawnpoint.models import Role

pytestmark = pytest.mark.postgres

SPAWNS = 300
PER_SECOND = 30.0
BURST = 10
CRASH_AT_SPAWN = 90
DOWN_SECONDS = 2.0
REQUEST_TIMEOUT = 10.0
RECOVERY_SECONDS = 5.0
READ_EVERY = 0.05
WORKER_OPTIONS = ("--lease-seconds", "3", "--rescue-interval", "0.5", "--poll-interval", "0.5")


def assert_database_unavailable(outcome: Outcome) -> None:
    assert outcome.headers.get("content-type") == "application/problem+json", outcome
    assert int(outcome.headers["retry-after"]) > 0, outcome
    assert outcome.body is not None
    assert outcome.body["type"] == "urn:spawnpoint:problem:database-unavailable", outcome
    assert outcome.body["status"] == 503


async def test_database_restart_mid_run(deployment: Deployment) -> None:
    org = await deployment.org()
    member = org.headers[Role.member]
    api = await deployment.start_api()
    for name in ("worker-1", "worker-2"):
        await deployment.start_worker(name, *WORKER_OPTIONS)

    crash_now = asyncio.Event()
    done = asyncio.Event()
    marks: dict[str, float] = {}
    reads: list[Outcome] = []

    async def restart() -> None:
        await crash_now.wait()
        # Somewhere in the burst: requests in their transactions, workers in their jobs.
        await asyncio.sleep(random.uniform(0.002, 0.08))
        marks["down"] = time.monotonic()
        await deployment.server.astop("immediate")
        await asyncio.sleep(DOWN_SECONDS)  # the outage's length: load shape, not a wait
        await deployment.server.astart()
        marks["back"] = time.monotonic()

    async def read(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            url = "/api/workspaces?limit=1"
            reads.append(await request_once(client, "GET", url, headers=member))
            await asyncio.sleep(READ_EVERY)  # load shape, not a wait for state

    def sent(index: int) -> None:
        if index == CRASH_AT_SPAWN:
            crash_now.set()

    restarter = asyncio.create_task(restart())
    async with httpx.AsyncClient(base_url=api.base_url, timeout=REQUEST_TIMEOUT) as client:
        reader = asyncio.create_task(read(client))
        outcomes = await paced_spawns(
            client,
            count=SPAWNS,
            per_second=PER_SECOND,
            burst=BURST,
            template_id=org.template_id,
            headers=member,
            started=sent,
        )
        await restarter
        done.set()
        await reader
    down, back = marks["down"], marks["back"]

    # While the database is down: 503 problem documents with Retry-After, nothing else.
    for outcome in [*outcomes, *reads]:
        assert outcome.status in (200, 202, 503), outcome
        if outcome.status == 503:
            assert_database_unavailable(outcome)
    refused = [o for o in outcomes if o.status == 503]
    assert refused, "no spawn met the outage"
    assert all(o.answered >= down for o in refused)

    # Back within RECOVERY_SECONDS, and nothing refused after that.
    first_spawn = min(o.answered for o in outcomes if o.status == 202 and o.sent >= back)
    first_read = min(o.answered for o in reads if o.status == 200 and o.sent >= back)
    print(
        f"{len(refused)} spawns refused; database down {back - down:.2f}s; first 2xx after it"
        f" was back: read {first_read - back:.3f}s, spawn {first_spawn - back:.3f}s"
    )
    assert first_read - back <= RECOVERY_SECONDS
    assert first_spawn - back <= RECOVERY_SECONDS
    late = [o for o in [*outcomes, *reads] if o.status == 503 and o.sent > back + RECOVERY_SECONDS]
    assert late == []

    # A refused spawn is the client's to retry: under its external_ref, a retry either
    # spawns (202) or finds the workspace whose commit the crash hid from the client (409).
    committed = {
        row[0]
        for row in await deployment.rows(
            "SELECT external_ref FROM workspaces WHERE tenant_id = %s", org.tenant_id
        )
    }
    async with httpx.AsyncClient(base_url=api.base_url, timeout=REQUEST_TIMEOUT) as client:
        retries = [await spawn_once(client, o.index, org.template_id, member) for o in refused]
    for retry in retries:
        assert retry.status == (409 if f"chaos-{retry.index}" in committed else 202), retry
    print(f"{sum(r.status == 409 for r in retries)} refused spawn(s) had committed")

    # Every acknowledged workspace runs, once.
    acknowledged = {o.workspace_id for o in [*outcomes, *retries] if o.status == 202}
    states = await all_running_once(deployment, org.tenant_id, SPAWNS, within=30)
    assert acknowledged <= set(states)
    assert len(states) == SPAWNS
    jobs = await provision_jobs(deployment, org.tenant_id)
    assert sorted(j.workspace_id for j in jobs) == sorted(states)
    assert {j.state for j in jobs} == {"succeeded"}
    assert all(j.lease_owner is None and j.lease_expires_at is None for j in jobs)
    for process in deployment.processes:
        assert process.alive, f"{process.name} exited\n{deployment.logs()}"
