"""The built-in service job types of the Service Layer seed: `plan-build`, `eval-run` and
`audit-report`.

Each does small, real work for the job's tenant, logs structured JSON lines (tenant,
project and job ids on every line) and, when it writes an artifact, names it in its result
(`{"artifact_id": ...}`). Reads run in the handler's own transactions, scoped to the job's
tenant through the domains' repositories; an artifact is written in a transaction that
first checks the job's lease is still held, so an attempt that lost its job writes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime
from typing import Annotated, Any, TypeVar

from annotated_types import Ge, Le
from pydantic import AwareDatetime, Field, ValidationError, model_validator
from pydantic_core import to_jsonable_python

from spawnpoint.artifacts.blobstore import BlobStore, blob_store_for_settings
from spawnpoint.artifacts.service import create_artifact_from_bytes
from spawnpoint.audit.chain import chain_of
from spawnpoint.audit.repository import AuditFilters, AuditLog
from spawnpoint.config import Settings
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.errors import JobCancelled, PermanentJobError
from spawnpoint.jobs.queue import held_result, keep_result
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import NotFound
from spawnpoint.kit.pagination import PageParams
from spawnpoint.kit.schemas import (
    INT32_MAX,
    InputSchema,
    JSONObject,
    json_field_limit,
    whole_number,
)
from spawnpoint.plans.repository import PlanRepository
from spawnpoint.policy.engine import PolicyEngine, build_policy_engine
from spawnpoint.provisioners import ProvisionerRegistry
from spawnpoint.scope import TenantScope
from spawnpoint.templates.repository import TemplateRepository
from spawnpoint.templates.schemas import TemplateSpec
from spawnpoint.tenants.repository import TenantRepository
from spawnpoint.workspaces.repository import WorkspaceRepository
from spawnpoint.workspaces.service import quota_violations

PLAN_BUILD = "plan-build"
EVAL_RUN = "eval-run"
AUDIT_REPORT = "audit-report"
JSON_CONTENT = "application/json"
AUDIT_PAGE = 500
# A report lists at most this many denials (the counts cover all of them).
MAX_DENIALS = 1000

P = TypeVar("P", bound=InputSchema)

# What each driver does for one workspace, in order (DESIGN.md "Provisioners").
DRIVER_STEPS: dict[str, list[str]] = {
    "dry-run": ["record the workspace as running; no infrastructure is created"],
    "local": [
        "create the workspace directory under DATA_DIR",
        "pick a free port and start the template's command as a supervised process",
        "wait until the port answers HTTP; its URL is the connection",
    ],
    "orchestrator": [
        "POST the scenario to ORCHESTRATOR_URL + ORCHESTRATOR_SCENARIOS_PATH "
        "(idempotency key: the job id)",
        "poll the scenario until it is ready",
    ],
    "kubernetes": [
        "apply a persistent volume claim for the workspace's storage",
        "apply the pod with the template's image, resources, ports and environment",
        "apply a service for its ports and a network policy for its stage",
    ],
}


class PlanBuildPayload(InputSchema):
    template_id: uuid.UUID
    version: Annotated[int, Ge(1), Le(INT32_MAX), whole_number] | None = Field(
        None, description="Template version; default: the current one."
    )


class EvalRunPayload(InputSchema):
    input: JSONObject = Field(description="The policy input document to decide on.")


class AuditReportPayload(InputSchema):
    since: AwareDatetime | None = Field(None, description="From this time (inclusive).")
    until: AwareDatetime | None = Field(None, description="Up to this time (exclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> AuditReportPayload:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since must not be after until")
        return self


def log_json(ctx: JobContext, event: str, **fields: Any) -> None:
    """One structured log line of the job, with its tenant, project and job ids."""
    line = {
        "event": event,
        "job_id": str(ctx.job_id),
        "job_type": ctx.job_type,
        "tenant_id": None if ctx.tenant_id is None else str(ctx.tenant_id),
        "project_id": None if ctx.project_id is None else str(ctx.project_id),
        "attempt": ctx.attempt,
        **fields,
    }
    ctx.log(json.dumps(to_jsonable_python(line), sort_keys=True))


def _tenant(ctx: JobContext) -> uuid.UUID:
    if ctx.tenant_id is None:
        raise PermanentJobError(f"a {ctx.job_type} job needs a tenant")
    return ctx.tenant_id


def _payload(ctx: JobContext, model: type[P]) -> P:
    """The payload, read by its model; a payload stored before the model changed fails
    the job at once (no retry would read it)."""
    # The API accepted the payload under this limit; the worker reads it under the same.
    token = json_field_limit.set(ctx.settings.max_json_field_bytes)
    try:
        return model.model_validate(ctx.payload)
    except ValidationError as exc:
        raise PermanentJobError(f"the payload does not fit {ctx.job_type}: {exc}") from exc
    finally:
        json_field_limit.reset(token)


def _check_cancel(ctx: JobContext) -> None:
    if ctx.cancel_requested:
        log_json(ctx, "cancelled")
        raise JobCancelled("cancelled on request")


class BuiltinHandlers:
    """The built-in handlers, holding what they reuse across jobs (policy engine, store)."""

    def __init__(self, provisioners: ProvisionerRegistry | None = None) -> None:
        self.provisioners = provisioners or ProvisionerRegistry.from_entry_points()
        self._engine: PolicyEngine | None = None
        self._stores: dict[str, BlobStore] = {}

    def register(self, registry: HandlerRegistry) -> None:
        registry.register(PLAN_BUILD, self.plan_build, payload=PlanBuildPayload)
        registry.register(EVAL_RUN, self.eval_run, payload=EvalRunPayload)
        registry.register(AUDIT_REPORT, self.audit_report, payload=AuditReportPayload)
        registry.on_close(self.aclose)

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.aclose()
            self._engine = None

    def _engine_for(self, settings: Settings) -> PolicyEngine:
        if self._engine is None:
            self._engine = build_policy_engine(settings, timeout=settings.policy_timeout_seconds)
        return self._engine

    def _store(self, settings: Settings) -> BlobStore:
        key = str(settings.data_dir)
        if key not in self._stores:
            self._stores[key] = blob_store_for_settings(settings)
        return self._stores[key]

    async def write_artifact(
        self,
        ctx: JobContext,
        *,
        name: str,
        artifact_type: str,
        document: dict[str, Any],
        metadata: dict[str, Any],
    ) -> uuid.UUID:
        """Store `document` as a JSON artifact of the job's tenant, under the job's lease.

        The artifact's id is kept on the job row in the same transaction, so an attempt
        that runs again after its predecessor died between this commit and the outcome's
        finds the artifact instead of writing a second one.
        """
        content = json.dumps(to_jsonable_python(document), indent=2, sort_keys=True).encode()
        token = ctx.fencing_token
        async with ctx.database.unit_of_work(write=True) as uow:
            kept = await held_result(uow.session, job_id=ctx.job_id, fencing_token=token)
            if kept is not None and kept.get("artifact_id"):
                log_json(ctx, "artifact.reused", artifact_id=kept["artifact_id"])
                return uuid.UUID(str(kept["artifact_id"]))
            artifact_id = await create_artifact_from_bytes(
                uow,
                tenant_id=_tenant(ctx),
                name=name,
                type=artifact_type,
                content=content,
                content_type=JSON_CONTENT,
                metadata={"job_id": str(ctx.job_id), "job_type": ctx.job_type, **metadata},
                created_by=ctx.actor_id,
                store=self._store(ctx.settings),
            )
            await keep_result(
                uow.session,
                job_id=ctx.job_id,
                fencing_token=token,
                result={"artifact_id": str(artifact_id)},
            )
            return artifact_id

    async def plan_build(self, ctx: JobContext) -> dict[str, Any]:
        """Validate a template version's spec, resolve what provisioning it would do and
        whether it fits the plan now, and write the build plan as an artifact."""
        tenant_id = _tenant(ctx)
        payload = _payload(ctx, PlanBuildPayload)
        log_json(ctx, "plan-build.started", template_id=payload.template_id)
        scope = TenantScope(tenant_id, all_tenants=False)
        async with ctx.database.transaction(write=False) as session:
            templates = TemplateRepository(session, scope)
            try:
                template, version = await templates.get_with_current(payload.template_id)
                if payload.version is not None and payload.version != version.version:
                    version = await templates.get_version(template.id, payload.version)
                tenant = await TenantRepository(session, scope).get(tenant_id)
                plan = await PlanRepository(session, scope).get(tenant.plan_id)
            except NotFound as exc:
                log_json(ctx, "plan-build.failed", error=exc.detail)
                raise PermanentJobError(exc.detail) from exc
            usage = await WorkspaceRepository(session, scope).usage(tenant_id)
            template_name, version_number = template.name, version.version
            provisioner, stored = version.provisioner, dict(version.spec)
        _check_cancel(ctx)
        try:
            spec = TemplateSpec.model_validate(stored)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
            ]
            log_json(ctx, "plan-build.invalid", errors=problems)
            raise PermanentJobError("the spec is invalid: " + "; ".join(problems)) from exc
        installed = provisioner in self.provisioners.names()
        violations = quota_violations(plan, usage, spec)
        steps = DRIVER_STEPS.get(provisioner, [f"run the {provisioner!r} driver's provision"])
        plan_document = {
            "kind": "build-plan",
            "generated_at": utcnow(),
            "job_id": ctx.job_id,
            "tenant_id": tenant_id,
            "project_id": ctx.project_id,
            "template": {"id": payload.template_id, "name": template_name},
            "version": version_number,
            "provisioner": {"name": provisioner, "installed": installed, "steps": steps},
            "resources": {
                "cpu": spec.cpu,
                "memory_mb": spec.memory_mb,
                "storage_gb": spec.storage_gb,
                "ports": spec.ports,
            },
            "runtime": {
                "image": spec.image,
                "command": spec.command,
                "env": sorted(spec.env),
                "idle_timeout_minutes": spec.idle_timeout_minutes,
                "max_lifetime_days": spec.max_lifetime_days,
                "hourly_cost": spec.hourly_cost,
                "restricted": spec.restricted,
            },
            "plan": {
                "name": plan.name,
                "fits": not violations,
                "violations": [v.reason(plan.name) for v in violations],
                "usage": usage.model_dump(),
            },
        }
        log_json(
            ctx,
            "plan-build.resolved",
            provisioner=provisioner,
            installed=installed,
            steps=len(steps),
            fits_plan=not violations,
        )
        _check_cancel(ctx)
        artifact_id = await self.write_artifact(
            ctx,
            name=f"build-plan-{template_name}-v{version_number}",
            artifact_type="build-plan",
            document=plan_document,
            metadata={"template_id": str(payload.template_id), "version": version_number},
        )
        log_json(ctx, "plan-build.done", artifact_id=artifact_id)
        return {
            "artifact_id": str(artifact_id),
            "template_id": str(payload.template_id),
            "version": version_number,
            "provisioner": provisioner,
            "fits_plan": not violations,
        }

    async def eval_run(self, ctx: JobContext) -> dict[str, Any]:
        """Decide a policy input document with the tenant's policy; keep the decision and
        its reasons as the job's result.

        Tenants have no policy modules of their own yet, so the tenant's policy is the
        platform's (the shipped default, or OPA's under POLICY_ENGINE=opa). An engine that
        cannot answer fails the attempt, which is retried.
        """
        _tenant(ctx)
        payload = _payload(ctx, EvalRunPayload)
        log_json(ctx, "eval-run.started", input_keys=sorted(payload.input))
        _check_cancel(ctx)
        decision = await self._engine_for(ctx.settings).evaluate(payload.input)
        log_json(ctx, "eval-run.decided", allow=decision.allow, reasons=decision.reasons)
        return {
            "allow": decision.allow,
            "reasons": decision.reasons,
            "engine": ctx.settings.policy_engine,
            "decided_at": utcnow().isoformat(),
        }

    async def audit_report(self, ctx: JobContext) -> dict[str, Any]:
        """Summarise the tenant's audit entries over the period into an artifact: counts by
        action, actor and result, and the denials listed."""
        tenant_id = _tenant(ctx)
        payload = _payload(ctx, AuditReportPayload)
        log_json(ctx, "audit-report.started", since=payload.since, until=payload.until)
        by_action: Counter[str] = Counter()
        by_actor: Counter[str] = Counter()
        by_result: Counter[str] = Counter()
        denials: list[dict[str, Any]] = []
        first: datetime | None = None
        last: datetime | None = None
        total = 0
        filters = AuditFilters(since=payload.since, until=payload.until)
        cursor: str | None = None
        # Page by page (newest first), so memory stays bounded however long the period.
        while True:
            async with ctx.database.transaction(write=False) as session:
                entries, cursor = await AuditLog(session).page(
                    chain_of(tenant_id), filters, PageParams(limit=AUDIT_PAGE, cursor=cursor)
                )
            for entry in entries:
                total += 1
                by_action[entry.action] += 1
                by_actor[f"{entry.actor_type}:{entry.actor_id or '-'}"] += 1
                by_result[entry.result] += 1
                first = entry.time if first is None else min(first, entry.time)
                last = entry.time if last is None else max(last, entry.time)
                if entry.result == "denied" and len(denials) < MAX_DENIALS:
                    denials.append(
                        {
                            "seq": entry.seq,
                            "time": entry.time,
                            "action": entry.action,
                            "actor": f"{entry.actor_type}:{entry.actor_id or '-'}",
                            "resource_type": entry.resource_type,
                            "resource_id": entry.resource_id,
                            "reason": entry.reason,
                            "status": entry.details.get("status"),
                            "detail": entry.details.get("detail"),
                        }
                    )
            _check_cancel(ctx)
            if cursor is None:
                break
        denied = by_result.get("denied", 0)
        report = {
            "kind": "audit-report",
            "generated_at": utcnow(),
            "job_id": ctx.job_id,
            "tenant_id": tenant_id,
            "period": {"since": payload.since, "until": payload.until},
            "entries": total,
            "first_entry_at": first,
            "last_entry_at": last,
            "by_action": dict(sorted(by_action.items())),
            "by_actor": dict(sorted(by_actor.items())),
            "by_result": dict(sorted(by_result.items())),
            "denials": sorted(denials, key=lambda d: d["seq"]),
            "denials_truncated": denied > len(denials),
        }
        log_json(ctx, "audit-report.summarised", entries=total, denied=denied)
        artifact_id = await self.write_artifact(
            ctx,
            name=f"audit-report-{utcnow():%Y%m%dT%H%M%SZ}",
            artifact_type="audit-report",
            document=report,
            metadata={
                "since": None if payload.since is None else payload.since.isoformat(),
                "until": None if payload.until is None else payload.until.isoformat(),
                "entries": total,
            },
        )
        log_json(ctx, "audit-report.done", artifact_id=artifact_id)
        return {"artifact_id": str(artifact_id), "entries": total, "denied": denied}


def register_builtins(registry: HandlerRegistry) -> None:
    """Register `plan-build`, `eval-run` and `audit-report` (see `default_registry`)."""
    BuiltinHandlers().register(registry)
