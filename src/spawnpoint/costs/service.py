"""The costs API: a tenant's costs for admins and auditors, one's own for everyone else."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import ColumnElement

from spawnpoint.costs.repository import CostRepository
from spawnpoint.costs.schemas import CostGroup, CostReport, GroupBy
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import Forbidden, as_utc, field_error
from spawnpoint.kit.pagination import PageParams, decode_cursor, encode_cursor
from spawnpoint.models import CostRecord, Role, Workspace
from spawnpoint.security import Principal
from spawnpoint.workspaces.repository import WorkspaceRepository

CENT = Decimal("0.01")
# Who reads every cost of their tenant; anyone else reads the costs charged to them.
TENANT_READERS = frozenset({Role.admin, Role.auditor})


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def reads_tenant(actor: Principal) -> bool:
    return actor.operator or actor.role in TENANT_READERS


class CostService:
    def __init__(
        self, costs: CostRepository, workspaces: WorkspaceRepository, *, currency: str
    ) -> None:
        self.costs = costs
        self.workspaces = workspaces
        self.currency = currency

    async def report(
        self,
        *,
        actor: Principal,
        since: datetime | None,
        until: datetime | None,
        group_by: GroupBy | None,
        params: PageParams,
        workspace_id: uuid.UUID | None = None,
    ) -> CostReport:
        """Costs of the hours starting in [since, until) (default: this calendar month, UTC)."""
        this_month = month_start(utcnow())
        since = as_utc(since, "#/query/since") or this_month
        until = as_utc(until, "#/query/until") or next_month(this_month)
        if since >= until:
            raise field_error("#/query/since", "`since` must be earlier than `until`.")
        conditions: list[ColumnElement[bool]] = []
        if workspace_id is not None:
            conditions.append(CostRecord.workspace_id == workspace_id)
        if not reads_tenant(actor):
            conditions.append(CostRecord.user_id == actor.user_id)
        total = await self.costs.total(since, until, conditions)
        items: list[CostGroup] = []
        next_cursor: str | None = None
        if group_by is not None:
            after = None if params.cursor is None else decode_cursor(params.cursor, _key(group_by))
            groups = await self.costs.groups(
                since,
                until,
                conditions,
                group_by=group_by.value,
                after=after,
                limit=params.limit + 1,
            )
            if len(groups) > params.limit:
                groups = groups[: params.limit]
                last = groups[-1][0]
                next_cursor = encode_cursor(last if last is not None else uuid.UUID(int=0))
            items = [CostGroup(key=key, amount=cents(amount)) for key, amount in groups]
        return CostReport(
            since=since,
            until=until,
            currency=self.currency,
            group_by=group_by,
            total=cents(total),
            items=items,
            next_cursor=next_cursor,
        )

    async def workspace_report(
        self,
        *,
        actor: Principal,
        workspace_id: uuid.UUID,
        since: datetime | None,
        until: datetime | None,
        group_by: GroupBy | None,
        params: PageParams,
    ) -> CostReport:
        """One workspace's costs: its owner's, or any for admins and auditors."""
        workspace: Workspace = await self.workspaces.get(workspace_id)
        if not reads_tenant(actor) and workspace.owner_id != actor.user_id:
            raise Forbidden("Only admins and auditors read the costs of others' workspaces.")
        return await self.report(
            actor=actor,
            since=since,
            until=until,
            group_by=group_by,
            params=params,
            workspace_id=workspace_id,
        )


def _key(group_by: GroupBy) -> Callable[[str], str]:
    """Cursors hold a group key: a UUID's text or a day; both are checked on use."""

    def parse(text: str) -> str:
        if group_by == GroupBy.day:
            datetime.strptime(text, "%Y-%m-%d")
        else:
            uuid.UUID(text)
        return text

    return parse
