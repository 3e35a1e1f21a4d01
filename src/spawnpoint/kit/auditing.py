"""Every mutating API request writes one audit entry: the route says what, the request who.

`StrictRoute` opens the request's unit of work with a `RequestAudit` (`audited_action`
names the action from the route, so a new route cannot forget it). The principal is set
when authentication succeeds; a create's resource id is learnt when its row is flushed
(or from `UnitOfWork.describe`), an update's changed fields (old → new) from the session's
flush. The entry commits with the change; when the request fails, the change rolls back
and the route writes the refusal's entry in a transaction of its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi.routing import APIRoute
from pydantic_core import to_jsonable_python
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from spawnpoint.audit.chain import AuditDraft
from spawnpoint.kit.clock import utcnow
from spawnpoint.logs import accepted_request_id

if TYPE_CHECKING:
    from spawnpoint.security import Principal

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
VERBS = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}
# Column names whose values never reach an audit entry.
SECRET_MARKERS = ("hash", "secret", "token", "password")
MAX_HEADER = 512
REQUEST_ID = "X-Request-ID"
REASON = "X-Reason"
PLATFORM = "platform"
ACTOR = "actor"


@dataclass(frozen=True)
class AuditedAction:
    """What a route's requests are recorded as, and on which tenant's chain.

    `chain` is `actor` (the caller's tenant), `platform` (the platform chain) or the name
    of a path parameter holding the tenant's id.
    """

    action: str
    resource_type: str
    chain: str = ACTOR
    resource_param: str | None = None


def _singular(collection: str) -> str:
    return collection[:-1] if collection.endswith("s") else collection


def audited_action(route: APIRoute) -> AuditedAction | None:
    """The audit action of a mutating route; None for reads.

    An explicit `openapi_extra={"x-audit-action": "template.publish"}` wins; otherwise it
    is derived from the path: `POST /api/templates` → `template.create`, `PUT .../{id}` →
    `template.update`, `DELETE` → `.delete`, `POST .../{id}/stop` → `workspace.stop`.
    """
    methods = (route.methods or set()) & MUTATING
    if not methods:
        return None
    parts = [p for p in route.path.split("/") if p and p not in {"api", "v1"}]
    params = [p[1:-1] for p in parts if p.startswith("{")]
    collection = parts[0] if parts else "platform"
    resource = _singular(collection)
    extra = route.openapi_extra or {}
    explicit = extra.get("x-audit-action")
    if explicit is not None:
        action = str(explicit)
        resource = str(extra.get("x-audit-resource", action.split(".")[0]))
    elif len(parts) > 2 and not parts[-1].startswith("{"):
        action = f"{resource}.{parts[-1].replace('-', '_')}"
    else:
        action = f"{resource}.{VERBS[sorted(methods)[0]]}"
    chain = ACTOR
    if resource == "plan":
        chain = PLATFORM
    elif resource == "tenant":
        chain = "tenant_id" if "tenant_id" in params else PLATFORM
    return AuditedAction(
        action=action,
        resource_type=resource,
        chain=str(extra.get("x-audit-chain", chain)),
        resource_param=params[0] if params else None,
    )


def _header(value: str | None) -> str | None:
    return None if value is None else value[:MAX_HEADER]


def _secret(name: str) -> bool:
    return any(marker in name for marker in SECRET_MARKERS)


@dataclass
class RequestAudit:
    """The audit entry a request is building; `draft` turns it into an `AuditDraft`."""

    what: AuditedAction
    path_params: dict[str, str]
    ip: str | None
    user_agent: str | None
    reason: str
    request_id: str
    principal: Principal | None = None
    resource_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        what: AuditedAction,
        *,
        path_params: dict[str, str],
        headers: Any,
        client_host: str | None,
        request_id: str | None = None,
    ) -> RequestAudit:
        """`request_id`: the one the request middleware accepted or made (see `logs.py`)."""
        request_id = request_id or accepted_request_id(headers.get(REQUEST_ID))
        return cls(
            what=what,
            path_params=path_params,
            ip=client_host,
            user_agent=_header(headers.get("user-agent")),
            reason=_header(headers.get(REASON)) or "unspecified",
            request_id=request_id,
            resource_id=path_params.get(what.resource_param) if what.resource_param else None,
        )

    def chain(self) -> uuid.UUID | None:
        assert self.principal is not None
        if self.what.chain == PLATFORM:
            return None
        if self.what.chain == ACTOR:
            return self.principal.tenant_id
        try:
            return uuid.UUID(self.path_params[self.what.chain])
        except (KeyError, ValueError):
            return self.principal.tenant_id

    def draft(self, result: str, **details: Any) -> AuditDraft:
        assert self.principal is not None
        key = self.principal.api_key_id
        return AuditDraft(
            tenant_id=self.chain(),
            actor_type="user" if key is None else "api_key",
            actor_id=str(self.principal.user_id if key is None else key),
            action=self.what.action,
            resource_type=self.what.resource_type,
            resource_id=self.resource_id,
            result=result,
            reason=self.reason,
            ip=self.ip,
            user_agent=self.user_agent,
            request_id=self.request_id,
            details=to_jsonable_python({**self.details, **details}),
        )

    def watch(self, session: Session) -> None:
        """Learn a create's id and an update's changes from what `session` flushes."""
        event.listen(session, "after_flush", self._after_flush)

    def _after_flush(self, session: Session, _context: object) -> None:
        table = f"{self.what.resource_type}s"
        for obj in session.new:
            if self.resource_id is None and getattr(obj, "__tablename__", None) == table:
                self.resource_id = str(obj.id)
        for obj in session.dirty:
            if getattr(obj, "__tablename__", None) != table:
                continue
            changes = {}
            for attr in inspect(obj).attrs:
                history = attr.history
                if _secret(attr.key) or not history.has_changes():
                    continue
                old = history.deleted[0] if history.deleted else None
                new = history.added[0] if history.added else None
                changes[attr.key] = {"old": old, "new": new}
            if changes:
                self.details.setdefault("changes", {}).update(
                    to_jsonable_python(changes, fallback=str)
                )


SCHEDULER = "scheduler"


def system_action(
    *,
    tenant_id: uuid.UUID | None,
    action: str,
    resource_type: str,
    resource_id: object,
    reason: str,
    at: datetime | None = None,
    actor_id: str = SCHEDULER,
    **details: Any,
) -> AuditDraft:
    """The audit entry of something the system did on its own (a sweep, a lease rescue)."""
    return AuditDraft(
        tenant_id=tenant_id,
        actor_type="system",
        actor_id=actor_id,
        action=action,
        resource_type=resource_type,
        resource_id=None if resource_id is None else str(resource_id),
        result="success",
        reason=reason,
        details=to_jsonable_python(details),
        time=at or utcnow(),
    )
