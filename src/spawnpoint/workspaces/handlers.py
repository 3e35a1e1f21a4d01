"""Job handlers that carry workspace transitions out through provisioner drivers.

Each handler runs a driver call outside any transaction, then records the outcome in one
write transaction that first checks the job's lease is still held (fencing), so a worker
whose lease expired cannot overwrite the work of the worker that took the job over. An
instant driver (`dry-run`) is called inside that transaction instead, after the working
state is entered. The job's own success rides in the same commit (`JobContext.succeed_in`).

A job that can never succeed fails at once, with the reason kept: a payload without a valid
workspace id, or a workspace whose stored spec or driver state cannot be decoded (the
workspace then fails too). The workspace's `parameters` are not read at all: drivers do
not get them, so a document stored before the edge refused it cannot stop provisioning.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.errors import PermanentJobError
from spawnpoint.jobs.queue import hold_lease
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.models import Workspace, WorkspaceState
from spawnpoint.provisioners import (
    AnyProvisioner,
    LogSink,
    ProvisionContext,
    ProvisionerError,
    ProvisionerRegistry,
    ProvisionResult,
    WorkspaceRef,
)
from spawnpoint.templates.stages import stage_spec
from spawnpoint.workspaces.lifecycle import SYSTEM, can_move, move, transition
from spawnpoint.workspaces.repository import JobRows
from spawnpoint.workspaces.status_cache import refresh_on_commit

S = WorkspaceState
DriverCall = Callable[[AnyProvisioner, ProvisionContext], Awaitable[ProvisionResult | None]]


@dataclass(frozen=True)
class Step:
    """One job type: the state it works in, the driver call, the state it ends in."""

    job_type: str
    working: S
    done: S
    call: DriverCall
    enter_from: frozenset[S] = frozenset()


async def _provision(driver: AnyProvisioner, ctx: ProvisionContext) -> ProvisionResult:
    return await driver.provision(ctx)


async def _start(driver: AnyProvisioner, ctx: ProvisionContext) -> ProvisionResult:
    return await driver.start(ctx)


async def _stop(driver: AnyProvisioner, ctx: ProvisionContext) -> ProvisionResult:
    return await driver.stop(ctx)


async def _destroy(driver: AnyProvisioner, ctx: ProvisionContext) -> None:
    await driver.destroy(ctx)


STEPS = (
    Step("workspace.provision", S.provisioning, S.running, _provision, frozenset({S.pending})),
    Step("workspace.start", S.starting, S.running, _start),
    Step("workspace.stop", S.stopping, S.stopped, _stop),
    Step("workspace.destroy", S.deleting, S.deleted, _destroy),
)


def provision_context(
    workspace: Workspace,
    spec: dict[str, Any] | None,
    *,
    idempotency_key: str,
    log: LogSink,
    settings: Settings,
) -> ProvisionContext:
    """What a driver call about `workspace` gets: its identity, spec and saved state.

    The spec is the template version's with the overrides of the workspace's stage.
    """
    return ProvisionContext(
        workspace=WorkspaceRef(
            id=workspace.id,
            tenant_id=workspace.tenant_id,
            name=workspace.name,
            template_id=workspace.template_id,
            template_version=workspace.template_version,
        ),
        spec=stage_spec(spec or {}, workspace.stage),
        state=dict(workspace.driver_state),
        idempotency_key=idempotency_key,
        log=log,
        settings=settings,
    )


class WorkspaceHandlers:
    """The `workspace.*` job handlers, bound to a set of provisioner drivers."""

    def __init__(self, provisioners: ProvisionerRegistry) -> None:
        self.provisioners = provisioners
        self._drivers: dict[str, AnyProvisioner] = {}

    def register(self, registry: HandlerRegistry) -> None:
        for step in STEPS:
            registry.register(step.job_type, self._handler(step))
        registry.on_close(self.aclose)

    def driver(self, name: str, settings: Settings) -> AnyProvisioner:
        # One driver per name per worker process: drivers may hold connection pools.
        if name not in self._drivers:
            self._drivers[name] = self.provisioners.create(name, settings)
        return self._drivers[name]

    async def aclose(self) -> None:
        for driver in self._drivers.values():
            await driver.aclose()
        self._drivers.clear()

    def _handler(self, step: Step) -> Callable[[JobContext], Awaitable[dict[str, Any] | None]]:
        async def handle(ctx: JobContext) -> dict[str, Any] | None:
            return await self.run(step, ctx)

        handle.__name__ = step.job_type.replace(".", "_")
        return handle

    async def run(self, step: Step, ctx: JobContext) -> dict[str, Any] | None:
        database: Database = ctx.database
        workspace_id = _workspace_id(ctx.payload)
        lease = (ctx.job_id, ctx.fencing_token)
        failure: Exception | None = None
        # The lease is checked before the working state is entered (in the same statements
        # as the load), so an attempt whose lease was taken back calls no driver; an instant
        # driver's outcome is written in this transaction too.
        try:
            async with database.transaction(write=True) as session:
                rows = JobRows(session)
                loaded = await rows.load(workspace_id, lease=lease)
                if loaded is None:
                    return {"skipped": "workspace no longer exists"}
                workspace, spec = loaded
                driver = self.driver(workspace.provisioner, ctx.settings)
                event = None
                if workspace.state in step.enter_from:
                    event = transition(
                        session,
                        workspace,
                        step.working,
                        actor=SYSTEM,
                        reason=f"{step.job_type} started",
                    )
                elif workspace.state != step.working:
                    # Another action overtook this job (a delete during provisioning, say).
                    return {"skipped": f"workspace is {workspace.state}"}
                context = provision_context(
                    workspace,
                    spec,
                    idempotency_key=str(ctx.job_id),
                    log=_log_sink(ctx),
                    settings=ctx.settings,
                )
                if driver.instant:
                    # Nothing outside waits on the working state: the call and its outcome
                    # ride in this commit, both events in order (a failure is recorded as
                    # any driver's, after the working state is committed).
                    try:
                        result = await step.call(driver, context)
                    except Exception as exc:
                        failure = exc
                    else:
                        done = self._finish(session, step, workspace, result)
                        outcome = {"state": workspace.state}
                        await ctx.succeed_in(session, outcome)
                        await rows.save(workspace, event, done)
                        return outcome
                if event is not None:
                    await rows.save(workspace, event)
        except orjson.JSONDecodeError as exc:
            # Written before the edge refused such documents; no retry can read it.
            message = f"the workspace's stored spec or driver state is not valid JSON: {exc}"
            await self._record_failure(ctx, workspace_id, step, message, None, final=True)
            raise PermanentJobError(message) from exc
        if failure is not None:
            await self._call_failed(ctx, workspace_id, step, failure)

        try:
            result = await step.call(driver, context)
        except Exception as exc:
            await self._call_failed(ctx, workspace_id, step, exc)

        async with database.transaction(write=True) as session:
            rows = JobRows(session)
            loaded = await rows.load(workspace_id, lease=lease)
            if loaded is None:
                return {"skipped": "workspace no longer exists"}
            workspace, _ = loaded
            done = self._finish(session, step, workspace, result)
            outcome = {"state": workspace.state}
            await ctx.succeed_in(session, outcome)
            await rows.save(workspace, done)
            return outcome

    @staticmethod
    def _finish(
        session: AsyncSession, step: Step, workspace: Workspace, result: ProvisionResult | None
    ) -> dict[str, Any] | None:
        """Apply a successful call's result and move the workspace to its done state (if
        nothing overtook the job); the done event's values, or None."""
        refresh_on_commit(
            session,
            workspace_id=workspace.id,
            tenant_id=workspace.tenant_id,
            external_ref=workspace.external_ref,
        )
        if step.done == S.deleted:
            workspace.driver_state = {}
            workspace.connection = None
        elif result is not None:
            workspace.driver_state = result.state
            workspace.connection = result.connection
        if workspace.state != step.working or not can_move(workspace.state, step.done):
            return None
        done = transition(
            session, workspace, step.done, actor=SYSTEM, reason=f"{step.job_type} done"
        )
        workspace.error = None
        if step.done == S.running:
            # Running because the API asked (a spawn or a start): activity from it.
            workspace.started_at = workspace.last_activity_at = done["at"]
            workspace.last_activity_source = "api"
        return done

    async def _call_failed(
        self, ctx: JobContext, workspace_id: uuid.UUID, step: Step, exc: Exception
    ) -> NoReturn:
        """Record a failed driver call on the workspace, then fail the attempt."""
        if isinstance(exc, ProvisionerError):
            final = not exc.retryable or ctx.attempt >= ctx.max_attempts
            await self._record_failure(ctx, workspace_id, step, exc.message, exc.state, final)
            if not exc.retryable:
                raise PermanentJobError(exc.message) from exc
            raise exc
        final = ctx.attempt >= ctx.max_attempts
        await self._record_failure(ctx, workspace_id, step, str(exc) or repr(exc), None, final)
        raise exc

    async def _record_failure(
        self,
        ctx: JobContext,
        workspace_id: uuid.UUID,
        step: Step,
        message: str,
        state: dict[str, Any] | None,
        final: bool,
    ) -> None:
        ctx.log(f"{step.job_type} attempt {ctx.attempt} failed: {message}")
        async with ctx.database.transaction(write=True) as session:
            await hold_lease(session, job_id=ctx.job_id, fencing_token=ctx.fencing_token)
            # The documents are not read: this must work when one of them cannot be.
            workspace = await JobRows(session).lock_for_failure(workspace_id)
            if workspace is None:
                return
            workspace.error = message
            refresh_on_commit(
                session,
                workspace_id=workspace.id,
                tenant_id=workspace.tenant_id,
                external_ref=workspace.external_ref,
            )
            if state is not None:
                workspace.driver_state = state
            # A job that failed before entering its working state (an unreadable row)
            # fails the workspace from the state it was in.
            entered = workspace.state == step.working or workspace.state in step.enter_from
            if final and entered:
                move(
                    session,
                    workspace,
                    S.failed,
                    actor=SYSTEM,
                    reason=f"{step.job_type} failed after {ctx.attempt} attempts: {message}",
                )


def _workspace_id(payload: dict[str, Any]) -> uuid.UUID:
    """The payload's workspace id.

    Raises:
        PermanentJobError: there is none, or it is not a UUID; no retry would find one.
    """
    value = payload.get("workspace_id")
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise PermanentJobError(
            f"the payload's workspace_id is not a UUID: {repr(value)[:100]}"
        ) from exc


def _log_sink(ctx: JobContext) -> Callable[[str], Awaitable[None]]:
    async def sink(line: str) -> None:
        ctx.log(line)

    return sink


def register(registry: HandlerRegistry) -> None:
    """The `spawnpoint.jobs` entry point: workspace handlers over the installed drivers."""
    WorkspaceHandlers(ProvisionerRegistry.from_entry_points()).register(registry)
