"""The dry-run driver: no infrastructure, but the state moves."""

from __future__ import annotations

from provisioners.conftest import ContextFactory, JobLog
from spawnpoint.provisioners.dry_run import DryRunProvisioner

DRY_RUN_CONNECTION = {"url": None, "dry_run": True}


async def test_lifecycle(make_ctx: ContextFactory, job_log: JobLog) -> None:
    driver = DryRunProvisioner(DryRunProvisioner.config_model())
    ctx = make_ctx(spec={"image": "example/scenario:1"})
    assert not (await driver.status(ctx)).running

    provisioned = await driver.provision(ctx)
    assert provisioned.connection == DRY_RUN_CONNECTION
    assert provisioned.state["phase"] == "running"
    status = await driver.status(ctx.with_state(provisioned.state))
    assert status.running
    assert status.connection == DRY_RUN_CONNECTION
    assert "dry run" in status.detail
    assert await driver.provision(ctx.with_state(provisioned.state)) == provisioned

    stopped = await driver.stop(ctx.with_state(provisioned.state))
    assert stopped.connection is None
    assert stopped.state["phase"] == "stopped"
    assert not (await driver.status(ctx.with_state(stopped.state))).running
    assert (await driver.stop(ctx.with_state(stopped.state))).state == stopped.state

    started = await driver.start(ctx.with_state(stopped.state))
    assert started.connection == DRY_RUN_CONNECTION
    assert (await driver.status(ctx.with_state(started.state))).running

    await driver.destroy(ctx.with_state(started.state))
    await driver.destroy(ctx.with_state(started.state))
    assert any("would destroy" in line for line in job_log.lines)
