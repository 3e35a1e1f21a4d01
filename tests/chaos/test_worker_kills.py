"""Ten SIGKILLs of worker processes during 500 spawns: nothing lost, nothing done twice.

Two `spawnpoint worker` processes run the spawns' provisioning jobs; a killer picks one at
random, kills it with SIGKILL and starts a replacement, ten times while the spawns arrive.
Short leases and a fast rescue bring a dead worker's jobs back within seconds.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from chaos.deployment import (
    Deployment,
    Process,
    all_running_once,
    eventually,
    paced_spawns,
    provision_jobs,
    worker_started,
)
from spawnpoint.models import Role

pytestmark = pytest.mark.postgres

SPAWNS = 500
PER_SECOND = 50.0
BURST = 10
KILLS = 10
WORKER_OPTIONS = (
    "--concurrency",
    "8",
    "--lease-seconds",
    "2",
    "--rescue-interval",
    "0.2",
    "--poll-interval",
    "0.5",
)


async def test_sigkilled_workers_lose_nothing_and_repeat_nothing(deployment: Deployment) -> None:
    org = await deployment.org()
    api = await deployment.start_api()
    started = 0

    async def start_worker(wait: bool) -> Process:
        nonlocal started
        started += 1
        return await deployment.start_worker(f"worker-{started}", *WORKER_OPTIONS, wait=wait)

    workers = [await start_worker(True), await start_worker(True)]
    killed: list[Process] = []
    chooser = random.Random()
    # Each kill lands a moment after a burst of spawns, while its jobs are being worked on.
    bursts = sorted(chooser.sample(range(2, SPAWNS // BURST - 5), KILLS))
    burst_sent: asyncio.Queue[int] = asyncio.Queue()

    def sent(index: int) -> None:
        if index % BURST == BURST - 1:
            burst_sent.put_nowait(index // BURST)

    async def holding(*, within: float) -> list[Process]:
        """The workers holding a job, polled for up to `within` seconds (none: [])."""
        deadline = time.monotonic() + within
        while True:
            rows = await deployment.rows(
                "SELECT lease_owner FROM jobs WHERE state = 'running' AND lease_owner IS NOT NULL"
            )
            pids = {owner.split(":")[1] for (owner,) in rows}
            found = [w for w in workers if w.alive and str(w.process.pid) in pids]
            if found or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(0.01)  # the next look; the deadline bounds the wait

    async def killer() -> None:
        for burst in bursts:
            while await burst_sent.get() < burst:
                pass
            await asyncio.sleep(chooser.uniform(0.005, 0.05))  # load shape, not a wait
            # Kill a worker holding a job (its lease names its pid) if one does within a
            # moment: a dry-run job takes milliseconds, and a kill between jobs tests less.
            holders = await holding(within=0.5)
            # A worker that is still starting holds nothing yet: kill one at work if any is.
            working = holders or [w for w in workers if await worker_started(w)] or workers
            victim = chooser.choice(working)
            workers.remove(victim)
            await victim.kill()
            killed.append(victim)
            workers.append(await start_worker(False))

    begin = time.monotonic()
    kills = asyncio.create_task(killer())
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as client:
        outcomes = await paced_spawns(
            client,
            count=SPAWNS,
            per_second=PER_SECOND,
            burst=BURST,
            template_id=org.template_id,
            headers=org.headers[Role.member],
            started=sent,
        )
    await kills
    print(f"load and kills done after {time.monotonic() - begin:.1f}s")
    assert [o.status for o in outcomes] == [202] * SPAWNS, [
        (o.status, o.error, o.body) for o in outcomes if o.status != 202
    ][:3]
    assert len(killed) == KILLS
    assert all(p.process.returncode == -9 for p in killed)

    states = await all_running_once(deployment, org.tenant_id, SPAWNS, within=60)
    print(f"settled after {time.monotonic() - begin:.1f}s")
    acknowledged = {o.workspace_id for o in outcomes}
    assert set(states) == acknowledged

    async def all_succeeded() -> list[object] | None:
        jobs = await provision_jobs(deployment, org.tenant_id)
        return jobs if {j.state for j in jobs} == {"succeeded"} else None

    jobs = await eventually(all_succeeded, within=30, what="every job to be recorded")
    assert sorted(j.workspace_id for j in jobs) == sorted(acknowledged)
    rescued = [j for j in jobs if j.attempts > 1]
    print(f"{len(rescued)} job(s) ran more than once: {sorted(j.attempts for j in rescued)}")
    print({str(j.result) for j in jobs})
    assert rescued, "no kill caught a worker holding a job"
    leftover = await deployment.rows(
        "SELECT id, state, lease_owner FROM jobs WHERE state = 'running' OR lease_owner IS NOT NULL"
        " OR lease_expires_at IS NOT NULL"
    )
    assert leftover == []
    for worker in workers:
        assert await worker.stop() == 0, deployment.logs()
