"""Fake drivers for failure paths, to register in a test's own registry.

    registry = ProvisionerRegistry.from_entry_points()
    flaky = FailsNTimesThenSucceeds.configure(failures=2)
    registry.add(flaky)                      # templates name it "fails-n-times"
    ...
    assert flaky.calls == [("provision", ws_id), ("provision", ws_id), ("provision", ws_id)]

Each fake behaves like `dry-run` except where it is told to misbehave. `configure(...)`
returns a fresh subclass with its own settings and its own call record and counters, so
tests never see each other's calls; the bare classes work with the defaults.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, ClassVar, Self, cast
from uuid import UUID

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from spawnpoint.config import Settings
from spawnpoint.provisioners.base import (
    PermanentProvisionerError,
    ProvisionContext,
    ProvisionerConfig,
    ProvisionerError,
    ProvisionResult,
    WorkspaceStatus,
)
from spawnpoint.provisioners.dry_run import DryRunProvisioner

Operation = str
LIFECYCLE = ("provision", "start", "stop", "destroy")


class FakeConfig(ProvisionerConfig):
    model_config = SettingsConfigDict(env_prefix="SPAWNPOINT_FAKE_")

    operations: tuple[Operation, ...] = Field(
        ("provision", "start"), description="The operations the fake misbehaves on."
    )
    permanent: bool = Field(False, description="Raise PermanentProvisionerError, not retryable.")
    message: str = Field("injected failure", description="The error message.")
    failures: int = Field(1, ge=0, description="FailsNTimesThenSucceeds: failures per operation.")
    delay_seconds: float = Field(0.0, ge=0, description="Slow: how long each operation takes.")
    ready_timeout_seconds: float = Field(
        0.2, ge=0, description="NeverReady: how long it waits before giving up."
    )


class FakeProvisioner(DryRunProvisioner, abstract=True):
    """Dry-run behaviour, a record of calls, and per-class presets."""

    config_model = FakeConfig
    preset: ClassVar[FakeConfig | None] = None
    calls: ClassVar[list[tuple[Operation, UUID]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.calls = []

    @classmethod
    def configure(cls, **values: Any) -> type[Self]:
        """Return a fresh subclass whose instances use `values` (FakeConfig fields)."""
        preset = FakeConfig(_env_file=None, **values)
        configured = type(cls.__name__, (cls,), {"preset": preset, "__module__": __name__})
        return cast(type[Self], configured)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        if cls.preset is not None:
            return cls(cls.preset)
        return super().from_settings(settings)

    @property
    def fake_config(self) -> FakeConfig:
        return cast(FakeConfig, self.config)

    async def provision(self, ctx: ProvisionContext) -> ProvisionResult:
        await self._before("provision", ctx)
        return await super().provision(ctx)

    async def start(self, ctx: ProvisionContext) -> ProvisionResult:
        await self._before("start", ctx)
        return await super().start(ctx)

    async def stop(self, ctx: ProvisionContext) -> ProvisionResult:
        await self._before("stop", ctx)
        return await super().stop(ctx)

    async def destroy(self, ctx: ProvisionContext) -> None:
        await self._before("destroy", ctx)
        await super().destroy(ctx)

    async def _before(self, operation: Operation, ctx: ProvisionContext) -> None:
        type(self).calls.append((operation, ctx.workspace.id))
        if operation in self.fake_config.operations:
            await self.misbehave(operation, ctx)

    async def misbehave(self, operation: Operation, ctx: ProvisionContext) -> None:
        """What the fake does instead of (or before) succeeding like dry-run."""

    def error(self, text: str) -> ProvisionerError:
        kind = PermanentProvisionerError if self.fake_config.permanent else ProvisionerError
        return kind(text)


class AlwaysFailing(FakeProvisioner):
    """Every configured operation fails (by default provision, start, stop and destroy)."""

    name = "always-failing"
    preset = FakeConfig(_env_file=None, operations=LIFECYCLE)

    @classmethod
    def configure(cls, **values: Any) -> type[Self]:
        values.setdefault("operations", LIFECYCLE)
        return super().configure(**values)

    async def misbehave(self, operation: Operation, ctx: ProvisionContext) -> None:
        await ctx.log(f"{operation}: {self.fake_config.message}")
        raise self.error(f"{operation} failed: {self.fake_config.message}")

    async def status(self, ctx: ProvisionContext) -> WorkspaceStatus:
        return WorkspaceStatus(running=False, detail="failing")


class Slow(FakeProvisioner):
    """Configured operations wait for `gate` to be set (when given), then `delay_seconds`.

    `entered` is set once an operation has begun waiting, so a test can act at that moment
    (cancel the job, kill the worker) without sleeping.
    """

    name = "slow"
    gate: ClassVar[asyncio.Event | None] = None
    entered: ClassVar[asyncio.Event]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.entered = asyncio.Event()

    @classmethod
    def configure(cls, *, gate: asyncio.Event | None = None, **values: Any) -> type[Self]:
        configured = super().configure(**values)
        configured.gate = gate
        return configured

    async def misbehave(self, operation: Operation, ctx: ProvisionContext) -> None:
        await ctx.log(f"{operation}: slow")
        type(self).entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fake_config.delay_seconds:
            await asyncio.sleep(self.fake_config.delay_seconds)


Slow.entered = asyncio.Event()


class NeverReady(FakeProvisioner):
    """Configured operations wait `ready_timeout_seconds` for readiness that never comes."""

    name = "never-ready"

    async def misbehave(self, operation: Operation, ctx: ProvisionContext) -> None:
        timeout = self.fake_config.ready_timeout_seconds
        await ctx.log(f"{operation}: waiting for readiness")
        await asyncio.sleep(timeout)
        raise ProvisionerError(
            f"the workspace did not become ready within {timeout:g} s",
            state={**ctx.state, "phase": "starting"},
        )

    async def status(self, ctx: ProvisionContext) -> WorkspaceStatus:
        return WorkspaceStatus(running=False, detail="starting (never ready)")


class FailsNTimesThenSucceeds(FakeProvisioner):
    """Each configured operation fails `failures` times per workspace, then succeeds."""

    name = "fails-n-times"
    attempts: ClassVar[Counter[tuple[Operation, UUID]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.attempts = Counter()

    async def misbehave(self, operation: Operation, ctx: ProvisionContext) -> None:
        key = (operation, ctx.workspace.id)
        type(self).attempts[key] += 1
        attempt = type(self).attempts[key]
        if attempt <= self.fake_config.failures:
            raise self.error(
                f"{operation} attempt {attempt} of {self.fake_config.failures + 1} "
                f"failed: {self.fake_config.message}"
            )


FailsNTimesThenSucceeds.attempts = Counter()

FAKES: tuple[type[FakeProvisioner], ...] = (
    AlwaysFailing,
    Slow,
    NeverReady,
    FailsNTimesThenSucceeds,
)
