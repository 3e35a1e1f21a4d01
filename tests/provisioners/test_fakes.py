"""The fake drivers behave as their names promise, so tests elsewhere can rely on them."""

from __future__ import annotations

import asyncio

import pytest

from provisioners.conftest import ContextFactory
from provisioners.fakes import (
    FAKES,
    AlwaysFailing,
    FailsNTimesThenSucceeds,
    NeverReady,
    Slow,
)
from spawnpoint.config import Settings
from spawnpoint.provisioners.base import (
    PermanentProvisionerError,
    ProvisionerError,
    ProvisionerRegistry,
)


def test_the_fakes_register_next_to_the_real_drivers(settings: Settings) -> None:
    registry = ProvisionerRegistry.from_entry_points()
    for fake in FAKES:
        registry.add(fake)
    assert {"always-failing", "slow", "never-ready", "fails-n-times"} <= set(registry.names())
    assert isinstance(registry.create("slow", settings), Slow)


async def test_always_failing_fails_every_operation(
    settings: Settings, make_ctx: ContextFactory
) -> None:
    driver = AlwaysFailing.from_settings(settings)
    ctx = make_ctx()
    for operation in (driver.provision, driver.start, driver.stop, driver.destroy):
        with pytest.raises(ProvisionerError) as caught:
            await operation(ctx)
        assert caught.value.retryable
    assert not (await driver.status(ctx)).running

    permanent = AlwaysFailing.configure(permanent=True, operations=("provision",))
    with pytest.raises(PermanentProvisionerError):
        await permanent.from_settings(settings).provision(ctx)
    await permanent.from_settings(settings).stop(ctx)
    assert permanent.calls == [("provision", ctx.workspace.id), ("stop", ctx.workspace.id)]


async def test_slow_waits_for_its_gate(settings: Settings, make_ctx: ContextFactory) -> None:
    gate = asyncio.Event()
    slow = Slow.configure(gate=gate)
    task = asyncio.create_task(slow.from_settings(settings).provision(make_ctx()))
    await asyncio.wait_for(slow.entered.wait(), timeout=5)
    assert not task.done()
    gate.set()
    result = await asyncio.wait_for(task, timeout=5)
    assert result.state["phase"] == "running"
    assert Slow.calls == [], "a configured class keeps its own record"


async def test_never_ready_gives_up_with_a_retryable_error(
    settings: Settings, make_ctx: ContextFactory
) -> None:
    driver = NeverReady.configure(ready_timeout_seconds=0.05).from_settings(settings)
    ctx = make_ctx()
    with pytest.raises(ProvisionerError, match="did not become ready") as caught:
        await driver.provision(ctx)
    assert caught.value.state == {"phase": "starting"}
    assert not (await driver.status(ctx)).running
    await driver.stop(ctx)


async def test_fails_n_times_then_succeeds(settings: Settings, make_ctx: ContextFactory) -> None:
    flaky = FailsNTimesThenSucceeds.configure(failures=2)
    ctx = make_ctx()
    for _ in range(2):
        with pytest.raises(ProvisionerError, match="attempt"):
            await flaky.from_settings(settings).provision(ctx)
    result = await flaky.from_settings(settings).provision(ctx)
    assert result.state["phase"] == "running"
    assert flaky.attempts[("provision", ctx.workspace.id)] == 3
    other = make_ctx()
    with pytest.raises(ProvisionerError):
        await flaky.from_settings(settings).provision(other)
