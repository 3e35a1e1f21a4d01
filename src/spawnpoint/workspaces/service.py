"""Spawning and the user-driven lifecycle actions.

Every action writes the state change, its event and the job that carries it out in the
caller's transaction; the request commits them together (a spawn without an Idempotency-Key
commits in the same round trip as its rows).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from pydantic import ValidationError

from spawnpoint.budgets.periods import period_of
from spawnpoint.budgets.repository import BudgetClaims, BudgetScopeRepository
from spawnpoint.budgets.standing import (
    Standing,
    budget_facts,
    emit_budget_event,
    exceeded_reason,
    standings,
    worst,
)
from spawnpoint.costs.schemas import BudgetScope, BudgetState
from spawnpoint.events.outbox import spawn_refused
from spawnpoint.jobs.queue import enqueue, queued_job
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ProblemError,
    ServiceUnavailable,
    field_error,
)
from spawnpoint.kit.ids import uuid7
from spawnpoint.kit.inserts import with_defaults
from spawnpoint.kit.metrics import SPAWN_REFUSALS
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import (
    Job,
    Plan,
    Role,
    Template,
    TemplateVersion,
    Tenant,
    Workspace,
    WorkspaceEvent,
    WorkspaceState,
)
from spawnpoint.policy.engine import Decision, PolicyEngine, PolicyUnavailable
from spawnpoint.policy.input import (
    PolicyBudget,
    PolicyBudgetLimit,
    PolicyPlan,
    PolicyRequest,
    PolicyTemplate,
    PolicyTenant,
    PolicyUsage,
    PolicyUser,
    SpawnPolicyInput,
)
from spawnpoint.security import Principal
from spawnpoint.templates.repository import TemplateRepository
from spawnpoint.templates.schemas import TemplateSpec
from spawnpoint.templates.stages import defines_stage, stage_storage_gb
from spawnpoint.uow import unit_of
from spawnpoint.workspaces.alive import budget_stops
from spawnpoint.workspaces.lifecycle import announce, creation_event, move
from spawnpoint.workspaces.repository import (
    Admission,
    OverQuota,
    SpawnRows,
    WorkspaceRepository,
)
from spawnpoint.workspaces.schemas import (
    ActivitySource,
    BudgetPreview,
    BudgetStop,
    SpawnCheck,
    SpawnRequest,
    Usage,
)
from spawnpoint.workspaces.status_cache import refresh_on_commit

S = WorkspaceState
USER = "user"


class QuotaExceeded(ProblemError):
    status = 429
    slug = "quota-exceeded"


@dataclass(frozen=True)
class QuotaViolation:
    limit: str
    allowed: float
    used: float
    requested: float

    def reason(self, plan_name: str) -> str:
        return (
            f"plan {plan_name!r} allows {self.allowed:g} for {self.limit}; "
            f"the tenant uses {self.used:g} and this workspace needs {self.requested:g}"
        )


def stored_spec(version: TemplateVersion) -> TemplateSpec:
    """A version's spec, refused with a 409 when it breaks today's limits.

    Versions written before a limit existed may hold values no workspace can be spawned
    with (a lifetime past the calendar's end); they stay readable, but not spawnable.
    """
    try:
        return TemplateSpec.model_validate(version.spec)
    except ValidationError as exc:
        fields = ", ".join(sorted({str(error["loc"][0]) for error in exc.errors()}))
        raise Conflict(
            f"Version {version.version} of this template has values outside today's limits "
            f"({fields}); publish a new version to spawn it."
        ) from exc


def quota_violations(plan: Plan, usage: Usage, spec: TemplateSpec) -> list[QuotaViolation]:
    """Which plan limits one more workspace of `spec` would break."""
    # Decimal arithmetic, as `spawnpoint_admit_spawn` counts: 0.1 + 0.2 is 0.3 there.
    checks: list[tuple[str, Decimal | int, Decimal | int, Decimal | int]] = [
        ("max_workspaces", plan.max_workspaces, usage.workspaces, 1),
        ("max_cpu", plan.max_cpu, Decimal(str(usage.cpu)), Decimal(str(spec.cpu))),
        ("max_memory_mb", plan.max_memory_mb, usage.memory_mb, spec.memory_mb),
        ("max_storage_gb", plan.max_storage_gb, usage.storage_gb, spec.storage_gb),
    ]
    return [
        QuotaViolation(limit=name, allowed=float(allowed), used=float(used), requested=float(need))
        for name, allowed, used, need in checks
        if used + need > allowed
    ]


def raise_for_quota(plan: Plan, usage: Usage, violations: list[QuotaViolation]) -> None:
    """Answer 429 naming the first broken limit, the usage and the plan."""
    if not violations:
        return
    first = violations[0]
    raise QuotaExceeded(
        f"Quota exceeded: {first.reason(plan.name)}.",
        limit=first.limit,
        limits=[v.limit for v in violations],
        usage=usage.model_dump(),
        plan=PolicyPlan.model_validate(plan).model_dump(mode="json"),
    )


def policy_budget(
    found: Sequence[Standing], period: tuple[datetime, datetime], time_zone: str
) -> PolicyBudget:
    """The policy input's `budget`: the standings of the budgets in scope of the spawn."""
    return PolicyBudget(
        status=worst([s.state for s in found]).value,
        period_start=period[0],
        period_end=period[1],
        time_zone=time_zone,
        budgets=[
            PolicyBudgetLimit(
                id=s.budget.id,
                scope=s.budget.scope,
                scope_id=s.budget.scope_id,
                limit=float(s.budget.limit_amount),
                spent=float(s.spent.quantize(Decimal("0.01"))),
                ratio=float(s.ratio),
                warn_ratio=float(s.budget.warn_ratio),
                hard_ratio=float(s.budget.hard_ratio),
                state=s.state.value,
            )
            for s in found
        ],
    )


@dataclass(frozen=True)
class Evaluation:
    tenant: Tenant
    plan: Plan
    template: Template
    version: TemplateVersion
    spec: TemplateSpec
    usage: Usage
    violations: list[QuotaViolation]
    decision: Decision
    # The budgets in scope of the spawn (tenant, project, user), read with no cache.
    standings: list[Standing]

    def exceeded(self) -> list[Standing]:
        return [s for s in self.standings if s.state == BudgetState.exceeded]

    def refusal_reasons(self) -> list[str]:
        """The policy's reasons, and each exceeded budget the policy did not name.

        Budgets are enforced here too, as quotas are, whatever a policy says.
        """
        reasons = list(self.decision.reasons)
        reasons += [
            exceeded_reason(s)
            for s in self.exceeded()
            if not any(str(s.budget.id) in r for r in reasons)
        ]
        return reasons


def _same_moment(stored: datetime | None, moment: datetime) -> bool:
    """Whether a stored time is `moment` (SQLite may hand it back without its UTC offset)."""
    if stored is None:
        return False
    return (stored if stored.tzinfo else stored.replace(tzinfo=moment.tzinfo)) == moment


def preview(standing: Standing, rate: Decimal) -> BudgetPreview:
    """A budget in scope of a dry run: what is left, and for how long at `rate`."""
    budget = standing.budget
    hours = standing.hours_left(rate)
    return BudgetPreview(
        id=budget.id,
        scope=BudgetScope(budget.scope),
        scope_id=budget.scope_id,
        limit=budget.limit_amount,
        spent=standing.spent.quantize(Decimal("0.01")),
        state=standing.state,
        remaining=standing.remaining,
        hours_left=None if hours is None else float(hours),
        period_end=standing.period_end,
    )


class WorkspaceService:
    def __init__(
        self,
        repository: WorkspaceRepository,
        templates: TemplateRepository,
        *,
        policy: PolicyEngine,
        max_job_attempts: int = 5,
        currency: str = "USD",
    ) -> None:
        self.repository = repository
        self.session = repository.session
        self.rows = SpawnRows(repository.session)
        self.templates = templates
        self.policy = policy
        self.max_job_attempts = max_job_attempts
        self.currency = currency
        self.budget_scopes = BudgetScopeRepository(repository.session, repository.scope)

    async def get(self, workspace_id: uuid.UUID) -> Workspace:
        return await self.repository.get(workspace_id)

    async def read(self, workspace_id: uuid.UUID) -> Workspace:
        """The workspace as stored, detached: for reads that change nothing (polls)."""
        return await self.repository.read(workspace_id)

    async def page(
        self,
        params: PageParams,
        *,
        state: WorkspaceState | None = None,
        owner_id: uuid.UUID | None = None,
        template_id: uuid.UUID | None = None,
        project_id: uuid.UUID | None = None,
    ) -> tuple[list[Workspace], str | None]:
        return await self.repository.page_filtered(
            params, state=state, owner_id=owner_id, template_id=template_id, project_id=project_id
        )

    async def budget_stops(self, workspaces: Sequence[Workspace]) -> dict[uuid.UUID, BudgetStop]:
        """The budget stop of each running workspace of `workspaces` (for `lifecycle`)."""
        return await budget_stops(self.budget_scopes, workspaces, utcnow())

    async def events(
        self, workspace_id: uuid.UUID, params: PageParams
    ) -> tuple[list[WorkspaceEvent], str | None]:
        """A workspace's transitions, oldest first; 404 when the caller cannot see it."""
        await self.repository.get(workspace_id)
        return await self.repository.page_events(workspace_id, params)

    async def by_permit(self, permit_id: str) -> Workspace:
        return await self.repository.by_external_ref(permit_id)

    async def _version(
        self, template_id: uuid.UUID, version: int | None
    ) -> tuple[Template, TemplateVersion]:
        try:
            template, current = await self.templates.read_with_current(template_id)
        except NotFound as exc:
            raise field_error("#/template_id", "No template has this id.") from exc
        if version is None or version == current.version:
            return template, current
        try:
            return template, await self.templates.get_version(template_id, version)
        except NotFound as exc:
            raise field_error("#/version", "The template has no such version.") from exc

    async def _evaluate(
        self, *, actor: Principal, spawn_in: SpawnRequest, dry_run: bool
    ) -> Evaluation:
        """Gather the facts, check quotas, then ask the policy.

        The facts are one snapshot of the tenant (`SpawnRows.facts_for_spawn`): nothing is
        locked while the policy decides; the plan is checked again under the tenant lock
        when the rows are written. A spawn that breaks a quota is refused before the policy
        is asked; a dry run asks anyway, to report every reason.
        """
        template, version = await self._version(spawn_in.template_id, spawn_in.version)
        if template.deletion_requested_at is not None:
            raise Conflict("The template is being deleted; nothing can be spawned from it.")
        if spawn_in.project_id is not None:
            project = await self.rows.project(actor.tenant_id, spawn_in.project_id)
            if project is None:
                raise field_error("#/project_id", "No project of your tenant has this id.")
            if project.deletion_requested_at is not None:
                raise Conflict("The project is being deleted; nothing can be spawned into it.")
        tenant, plan, usage, budgets = await self.rows.facts_for_spawn(
            actor.tenant_id, budgets_for=(spawn_in.project_id, actor.user_id)
        )
        # Checked again under the tenant lock, which a cascading delete conflicts with.
        if tenant.deletion_requested_at is not None:
            raise Conflict("The tenant is being deleted; nothing can be spawned in it.")
        # The budgets came with the facts, in their round trip; their spending is read only
        # when there are some (a tenant without budgets pays no query for them).
        period = period_of(utcnow(), tenant.time_zone)
        found = await standings(self.session, budgets, {tenant.id: period}) if budgets else []
        spec = stored_spec(version)
        if spawn_in.stage is not None:
            if not defines_stage(version.spec, spawn_in.stage):
                raise field_error("#/stage", "The template defines no such stage.")
            # A stage may hold more (or less) storage than the template: quotas count it.
            storage = stage_storage_gb(version.spec, spawn_in.stage)
            spec = spec.model_copy(update={"storage_gb": storage})
        violations = quota_violations(plan, usage, spec)
        if violations and not dry_run:
            raise_for_quota(plan, usage, violations)
        policy_input = SpawnPolicyInput(
            tenant=PolicyTenant(
                id=tenant.id,
                name=tenant.name,
                slug=tenant.slug,
                status=tenant.status,
                plan=PolicyPlan.model_validate(plan),
            ),
            user=PolicyUser(id=actor.user_id, role=actor.role.value, operator=actor.operator),
            template=PolicyTemplate(
                id=template.id,
                name=template.name,
                version=version.version,
                provisioner=version.provisioner,
                tenant_id=template.tenant_id,
                spec=spec,
            ),
            request=PolicyRequest(
                name=spawn_in.name,
                project_id=spawn_in.project_id,
                external_ref=spawn_in.external_ref,
                parameters=spawn_in.parameters,
                dry_run=dry_run,
            ),
            usage=PolicyUsage.model_validate(usage),
            budget=policy_budget(found, period, tenant.time_zone),
        )
        try:
            decision = await self.policy.evaluate(policy_input.document())
        except PolicyUnavailable as exc:
            raise ServiceUnavailable(
                "The policy engine could not answer; nothing was created.", cause=str(exc)
            ) from exc
        return Evaluation(
            tenant=tenant,
            plan=plan,
            template=template,
            version=version,
            spec=spec,
            usage=usage,
            violations=violations,
            decision=decision,
            standings=found,
        )

    async def check(self, *, actor: Principal, spawn_in: SpawnRequest) -> SpawnCheck:
        """Run every check a spawn would, create nothing."""
        evaluation = await self._evaluate(actor=actor, spawn_in=spawn_in, dry_run=True)
        reasons = [v.reason(evaluation.plan.name) for v in evaluation.violations]
        # The default policy words the same quota breaches its own way; keep one of each.
        reasons += [
            r
            for r in evaluation.refusal_reasons()
            if not any(v.limit in r for v in evaluation.violations)
        ]
        allowed = (
            evaluation.decision.allow and not evaluation.violations and not evaluation.exceeded()
        )
        rate = Decimal(str(evaluation.spec.hourly_cost))
        return SpawnCheck(
            allowed=allowed,
            reasons=reasons,
            usage=evaluation.usage,
            hourly_cost=rate,
            currency=self.currency,
            budgets=[preview(s, rate) for s in evaluation.standings],
        )

    async def spawn(
        self, *, actor: Principal, spawn_in: SpawnRequest, final: bool = False
    ) -> tuple[Workspace, uuid.UUID]:
        """Create the pending workspace, its first event and its provisioning job.

        The three rows go out in one round trip that takes the tenant lock and checks the
        plan under it first. With `final` (the caller writes nothing more), the unit of
        work sends its outbox rows, audit entries and the COMMIT that releases the lock in
        the same round trip on PostgreSQL. Returns the workspace (not attached to the
        session) and the job's id.
        """
        try:
            return await self._spawn(actor=actor, spawn_in=spawn_in, final=final)
        except ServiceUnavailable:
            SPAWN_REFUSALS.labels("policy_unavailable").inc()
            raise
        except QuotaExceeded as exc:
            SPAWN_REFUSALS.labels("quota").inc()
            unit_of(self.session).emit_if_refused(
                spawn_refused(
                    tenant_id=actor.tenant_id,
                    template_id=spawn_in.template_id,
                    reasons=[exc.detail],
                    usage=exc.extra["usage"],
                )
            )
            raise

    async def _spawn(
        self, *, actor: Principal, spawn_in: SpawnRequest, final: bool
    ) -> tuple[Workspace, uuid.UUID]:
        uow = unit_of(self.session)
        evaluation = await self._evaluate(actor=actor, spawn_in=spawn_in, dry_run=False)
        exceeded = evaluation.exceeded()
        if not evaluation.decision.allow or exceeded:
            reasons = evaluation.refusal_reasons() or ["the policy did not allow this spawn"]
            SPAWN_REFUSALS.labels("policy").inc()
            uow.emit_if_refused(
                spawn_refused(
                    tenant_id=actor.tenant_id,
                    template_id=spawn_in.template_id,
                    reasons=reasons,
                    usage=evaluation.usage,
                )
            )
            raise Forbidden(
                "Policy denied the spawn: " + "; ".join(reasons) + ".",
                reasons=reasons,
                budgets=[budget_facts(s) for s in exceeded],
            )
        now = utcnow()
        await self._send_warnings(evaluation.standings, now)
        spec = evaluation.spec
        lifetime = spec.max_lifetime_days
        workspace = with_defaults(
            Workspace,
            {
                "id": uuid7(),
                "tenant_id": evaluation.tenant.id,
                "project_id": spawn_in.project_id,
                "owner_id": actor.user_id,
                "template_id": evaluation.template.id,
                "template_version": evaluation.version.version,
                "provisioner": evaluation.version.provisioner,
                "name": spawn_in.name or evaluation.template.name,
                "state": S.pending,
                "external_ref": spawn_in.external_ref,
                "parameters": spawn_in.parameters,
                "stage": spawn_in.stage,
                "cpu": spec.cpu,
                "memory_mb": spec.memory_mb,
                "storage_gb": spec.storage_gb,
                "idle_timeout_minutes": spec.idle_timeout_minutes,
                "driver_state": {},
                "connection": None,
                "error": None,
                "started_at": None,
                "created_at": now,
                "updated_at": now,
                "last_activity_at": now,
                "last_activity_source": "api",
                "expires_at": now + timedelta(days=lifetime) if lifetime else None,
            },
        )
        event = creation_event(
            workspace_id=workspace["id"],
            tenant_id=workspace["tenant_id"],
            actor_id=actor.user_id,
            now=now,
        )
        job = queued_job(
            job_type="workspace.provision",
            payload={"workspace_id": str(workspace["id"])},
            tenant_id=workspace["tenant_id"],
            actor_id=actor.user_id,
            project_id=spawn_in.project_id,
            max_attempts=self.max_job_attempts,
        )
        announce(self.session, workspace["external_ref"], event)
        uow.describe(
            resource_id=workspace["id"],
            template_id=evaluation.template.id,
            version=evaluation.version.version,
            job_id=job["id"],
        )
        admit = Admission(
            tenant_id=evaluation.tenant.id,
            cpu=Decimal(str(spec.cpu)),
            memory_mb=spec.memory_mb,
            storage_gb=spec.storage_gb,
            plan=evaluation.plan,
            usage=evaluation.usage,
        )
        try:
            await self.rows.insert(workspace, event, job, admit=admit, final=final)
        except OverQuota as exc:
            # Another spawn of the tenant took the room since the facts were read (or the
            # plan changed: then the stored plan refused what the one read allowed).
            plan, usage = evaluation.plan, exc.usage
            raise_for_quota(plan, usage, quota_violations(plan, usage, spec))
            raise QuotaExceeded(
                "Quota exceeded: the tenant's plan changed while this spawn was checked.",
                usage=usage.model_dump(),
                plan=PolicyPlan.model_validate(plan).model_dump(mode="json"),
            ) from exc
        return Workspace(**workspace), job["id"]

    async def _send_warnings(self, found: Sequence[Standing], now: datetime) -> None:
        """Claim and emit the `budget.warning` of each budget in warning whose warning this
        period is not sent yet: the scheduler would on its next pass; whichever comes first
        sends it, once (the claim is a conditional UPDATE that skips a row being claimed)."""
        for standing in found:
            if standing.state != BudgetState.warning:
                continue
            if _same_moment(standing.budget.warned_period, standing.period_start):
                continue
            claims = BudgetClaims(self.session)
            period = standing.period_start
            if await claims.claim(standing.budget.id, "warned_period", period, skip_locked=True):
                emit_budget_event(self.session, standing, "warning", now)

    async def _enqueue(self, workspace: Workspace, job_type: str, actor: Principal | None) -> Job:
        return await enqueue(
            self.session,
            job_type=job_type,
            payload={"workspace_id": str(workspace.id)},
            tenant_id=workspace.tenant_id,
            actor_id=actor.user_id if actor else None,
            project_id=workspace.project_id,
            max_attempts=self.max_job_attempts,
        )

    async def _actionable(self, actor: Principal, workspace_id: uuid.UUID) -> Workspace:
        workspace = await self.repository.get_for_update(workspace_id)
        if not actor.has(Role.admin) and workspace.owner_id != actor.user_id:
            raise Forbidden("Members act on their own workspaces only.")
        return workspace

    async def stop(
        self, *, actor: Principal, workspace_id: uuid.UUID
    ) -> tuple[Workspace, Job | None]:
        workspace = await self._actionable(actor, workspace_id)
        if workspace.state in (S.stopping, S.stopped):
            return workspace, None
        move(
            self.session,
            workspace,
            S.stopping,
            actor=USER,
            actor_id=actor.user_id,
            reason="stop requested",
        )
        return workspace, await self._enqueue(workspace, "workspace.stop", actor)

    async def start(
        self, *, actor: Principal, workspace_id: uuid.UUID
    ) -> tuple[Workspace, Job | None]:
        tenant_id = (await self.repository.get(workspace_id)).tenant_id
        _, plan = await self.rows.lock_tenant(tenant_id)
        workspace = await self._actionable(actor, workspace_id)
        if workspace.state in (S.starting, S.running):
            return workspace, None
        if workspace.state in (S.stopped, S.failed):
            usage = await self.repository.usage(tenant_id)
            spec = TemplateSpec(cpu=workspace.cpu, memory_mb=workspace.memory_mb, storage_gb=0)
            raise_for_quota(plan, usage, quota_violations(plan, usage, spec))
        move(
            self.session,
            workspace,
            S.starting,
            actor=USER,
            actor_id=actor.user_id,
            reason="start requested",
        )
        workspace.error = None
        return workspace, await self._enqueue(workspace, "workspace.start", actor)

    async def delete(
        self, *, actor: Principal, workspace_id: uuid.UUID
    ) -> tuple[Workspace, Job | None]:
        workspace = await self._actionable(actor, workspace_id)
        if workspace.state in (S.deleting, S.deleted):
            return workspace, None
        move(
            self.session,
            workspace,
            S.deleting,
            actor=USER,
            actor_id=actor.user_id,
            reason="delete requested",
        )
        return workspace, await self._enqueue(workspace, "workspace.destroy", actor)

    async def touch(
        self, *, actor: Principal, workspace_id: uuid.UUID, source: ActivitySource = "heartbeat"
    ) -> None:
        workspace = await self._actionable(actor, workspace_id)
        workspace.last_activity_at = utcnow()
        workspace.last_activity_source = source
        # The row's updated_at moves, and the status document shows it.
        refresh_on_commit(
            self.session,
            workspace_id=workspace.id,
            tenant_id=workspace.tenant_id,
            external_ref=workspace.external_ref,
        )
        await self.repository.flush()
