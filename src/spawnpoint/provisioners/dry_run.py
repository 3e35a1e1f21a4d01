"""The `dry-run` driver: no infrastructure, but the workspace still moves through its states.

It is the Spawn Service seed's "orchestrator disabled" mode and the provisioning seed's dry
run: every lifecycle transition, job and audit entry happens, and the driver's state records
what would have been done, so `status` can answer from it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from spawnpoint.kit.clock import utcnow
from spawnpoint.provisioners.base import (
    ProvisionContext,
    Provisioner,
    ProvisionerConfig,
    ProvisionResult,
    WorkspaceStatus,
)

RUNNING = "running"
STOPPED = "stopped"


def dry_run_connection() -> dict[str, Any]:
    """The connection of a dry-run workspace: marked as such, with no address to visit."""
    return {"url": None, "dry_run": True}


class DryRunProvisioner(Provisioner[ProvisionerConfig]):
    """Records each operation in the state and touches nothing else."""

    name = "dry-run"
    # Annotated, so subclasses (such as test fakes) may declare a richer config model.
    config_model: ClassVar[type[ProvisionerConfig]] = ProvisionerConfig
    # Nothing outside the process: its calls run in the transaction recording their outcome.
    instant = True

    async def provision(self, ctx: ProvisionContext) -> ProvisionResult:
        if ctx.state.get("phase") == RUNNING:
            return ProvisionResult(state=ctx.state, connection=dry_run_connection())
        await ctx.log(f"dry run: would provision workspace {ctx.workspace.id}")
        return self._moved(ctx, RUNNING)

    async def start(self, ctx: ProvisionContext) -> ProvisionResult:
        if ctx.state.get("phase") == RUNNING:
            return ProvisionResult(state=ctx.state, connection=dry_run_connection())
        await ctx.log(f"dry run: would start workspace {ctx.workspace.id}")
        return self._moved(ctx, RUNNING)

    async def stop(self, ctx: ProvisionContext) -> ProvisionResult:
        if ctx.state.get("phase") != RUNNING:
            return ProvisionResult(state=ctx.state, connection=None)
        await ctx.log(f"dry run: would stop workspace {ctx.workspace.id}")
        return self._moved(ctx, STOPPED)

    async def destroy(self, ctx: ProvisionContext) -> None:
        await ctx.log(f"dry run: would destroy workspace {ctx.workspace.id}")

    async def status(self, ctx: ProvisionContext) -> WorkspaceStatus:
        phase = ctx.state.get("phase")
        if phase == RUNNING:
            return WorkspaceStatus(
                running=True, connection=dry_run_connection(), detail="running (dry run)"
            )
        return WorkspaceStatus(running=False, detail=f"{phase or 'not provisioned'} (dry run)")

    def _moved(self, ctx: ProvisionContext, phase: str) -> ProvisionResult:
        state = {**ctx.state, "phase": phase, "changed_at": utcnow().isoformat()}
        connection = dry_run_connection() if phase == RUNNING else None
        return ProvisionResult(state=state, connection=connection)
