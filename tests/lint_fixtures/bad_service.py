"""A service that does everything tests/test_scoping_lint.py forbids, one form at a time.

Never imported and never collected (its name does not start with `test_`): the lint parses
it and must report exactly the line after each `# lint: <form>, <table>` mark. The other
lines are SQL the lint must leave alone: platform tables, and calls that only look alike.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import column, delete, insert, select, table, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.models import Job, Plan, Tenant, User
from spawnpoint.models import Workspace as Box

LIVE_COLUMNS = (Box.id, Box.state)
RAW_EVENTS = "SELECT * FROM workspace_events WHERE workspace_id = :id"


async def everything_wrong(session: AsyncSession, workspace_id: uuid.UUID) -> list[Any]:
    rows: list[Any] = []
    # lint: select(, workspaces
    rows += (await session.execute(select(Box).where(Box.id == workspace_id))).all()
    # lint: select(, workspaces
    rows += (await session.execute(select(*LIVE_COLUMNS))).all()
    # lint: session.get(, users
    rows.append(await session.get(User, workspace_id))
    # lint: text(, jobs
    rows.append(await session.execute(text("SELECT count(*) FROM jobs")))
    # lint: insert(, jobs
    await session.execute(insert(Job).values(type="x"))
    # lint: update(, tenants
    await session.execute(update(Tenant).values(status="suspended"))
    # lint: delete(, workspaces
    await session.execute(delete(Box).where(Box.id == workspace_id))
    # lint: delete(, workspaces
    await session.execute(Box.__table__.delete())
    # lint: update(, jobs
    await session.execute(update(table("jobs", column("state"))).values(state="queued"))
    connection = await session.connection()
    # lint: exec_driver_sql(, template_versions
    await connection.exec_driver_sql("DELETE FROM template_versions")
    # lint: .execute("..."), workspace_events
    await connection.execute(RAW_EVENTS)
    return rows


class Cache:
    def get(self, model: type[Any], key: uuid.UUID) -> Any:
        return (model, key)


def through_a_cache(cache: Cache, user_id: uuid.UUID) -> Any:
    # lint: .get(Model,, users
    return cache.get(User, user_id)


async def what_the_lint_allows(session: AsyncSession, settings: dict[str, Any]) -> list[Any]:
    rows: list[Any] = list((await session.execute(select(Plan))).all())
    rows.append(await session.execute(text("SELECT 1")))
    rows.append(settings.get("jobs"))
    rows.insert(0, settings.get("workspaces"))
    await session.execute(update(Plan).values(description=""))
    await session.delete(rows[0])
    return rows
