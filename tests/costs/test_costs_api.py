"""GET /api/costs and GET /api/workspaces/{id}/costs: aggregates, access, bad input."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import httpx
import pytest
from hypothesis import strategies as st
from sqlalchemy import delete, update

from conftest import Org, World
from costs.summary import assert_summary_exact
from costs.support import (
    MONTH,
    NEXT_MONTH,
    T0,
    priced_template,
    reset_watermark,
    run_pass,
    workspace_with_runs,
)
from drawn import examples
from factories import make_project, plant_workspace
from spawnpoint.kit.ids import uuid7
from spawnpoint.models import CostRecord, Role, WorkspaceState

GROUPINGS = ("user", "project", "workspace", "template", "day")
WINDOW = {
    "since": MONTH.strftime("%Y-%m-%dT%H:%M:%SZ"),
    "until": NEXT_MONTH.strftime("%Y-%m-%dT%H:%M:%SZ"),
}


@pytest.fixture(autouse=True)
async def own_timeline(world: World) -> AsyncIterator[None]:
    await reset_watermark(world)
    yield
    await reset_watermark(world)


# (workspace index, user index or None, project index or None, hour offset, amount)
RECORD = st.tuples(
    st.integers(0, 5),
    st.one_of(st.none(), st.integers(0, 2)),
    st.one_of(st.none(), st.integers(0, 2)),
    st.integers(-48, 24 * 40),
    st.decimals(min_value=0, max_value=1000, places=9, allow_nan=False, allow_infinity=False),
)
# Windows besides the whole month, cut near the records: (record, minutes before or after
# it) for `since` and for `until`. Their edges fall inside days (the summary serves whole
# days and the records the rest), or the whole window inside one day.
CUT = st.tuples(st.integers(0, 39), st.integers(-90, 90))
WINDOWS = st.lists(st.tuples(CUT, CUT), min_size=2, max_size=3)
# What happens to some records after they are written: a new amount, or deletion.
CHANGE = st.tuples(
    st.integers(0, 39),
    st.one_of(
        st.none(),
        st.decimals(min_value=0, max_value=1000, places=9, allow_nan=False, allow_infinity=False),
    ),
)
DATASET = st.tuples(
    st.lists(RECORD, max_size=40, unique_by=lambda r: (r[0], r[3])),
    WINDOWS,
    st.lists(CHANGE, max_size=6),
)


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


async def all_groups(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], query: dict[str, str]
) -> tuple[dict[str | None, Decimal], Decimal]:
    """Every group of a report, page by page (pages of two, to cross many cursors)."""
    found: dict[str | None, Decimal] = {}
    cursor: str | None = None
    total: Decimal | None = None
    while True:
        params = {**query, "limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await client.get(path, headers=headers, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        total = Decimal(body["total"])
        for item in body["items"]:
            assert item["key"] not in found
            found[item["key"]] = Decimal(item["amount"])
        keys = [item["key"] for item in body["items"]]
        assert keys == sorted(keys, key=lambda k: "" if k is None else k)
        cursor = body["next_cursor"]
        if cursor is None:
            assert total is not None
            return found, total


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_aggregates_equal_a_recomputation_on_random_data(
    client: httpx.AsyncClient, world: World
) -> None:
    """Written, rewritten and deleted records, read over whole days (the daily summary)
    and windows cut inside days (summary plus the records at the edges)."""
    datasets = examples(DATASET, 25)
    assert sum(len(d[0]) for d in datasets) > 50
    assert any(d[2] for d in datasets)
    edges = 0
    for dataset, cuts, changes in datasets:
        org = await world.org()
        users = [org.users[Role.member], org.users[Role.publisher], org.users[Role.viewer]]
        projects = [await make_project(world.database, org.tenant_id) for _ in range(3)]
        # The first is a real (stopped) workspace, whose own report is read too.
        planted = await plant_workspace(world.database, org, WorkspaceState.stopped)
        workspaces = [planted, *(uuid7() for _ in range(5))]
        rows = []
        async with world.database.transaction(write=True) as session:
            for ws, user, project, hour, amount in dataset:
                start = T0 + timedelta(hours=hour)
                row = {
                    "workspace_id": workspaces[ws],
                    "template_id": org.template_id,
                    "user_id": None if user is None else users[user],
                    "project_id": None if project is None else projects[project],
                    "period_start": start,
                    "amount": amount,
                }
                rows.append(row)
                session.add(
                    CostRecord(
                        tenant_id=org.tenant_id,
                        period_end=start + timedelta(minutes=30),
                        rate=Decimal(1),
                        currency="USD",
                        open=False,
                        recorded_at=start,
                        **row,
                    )
                )
        if rows:
            async with world.database.transaction(write=True) as session:
                for index, amount in changes:
                    row = rows[index % len(rows)]
                    match = (
                        CostRecord.workspace_id == row["workspace_id"],
                        CostRecord.period_start == row["period_start"],
                    )
                    if amount is None:
                        await session.execute(delete(CostRecord).where(*match))
                        row["deleted"] = True
                    else:
                        await session.execute(
                            update(CostRecord).where(*match).values(amount=amount)
                        )
                        row["amount"] = amount
            rows = [r for r in rows if not r.get("deleted")]
        await assert_summary_exact(world, org.tenant_id)
        windows = [(MONTH, NEXT_MONTH)]
        for (a, a_minutes), (b, b_minutes) in cuts if rows else ():
            ends = sorted(
                rows[i % len(rows)]["period_start"] + timedelta(minutes=m)
                for i, m in ((a, a_minutes), (b, b_minutes))
            )
            windows.append((ends[0], ends[1] + timedelta(minutes=1)))
        admin = org.headers[Role.admin]
        for since, until in windows:
            query = {"since": stamp(since), "until": stamp(until)}
            inside = [r for r in rows if since <= r["period_start"] < until]
            edges += sum(
                1 for r in inside if r["period_start"].date() in (since.date(), until.date())
            )
            for grouping in GROUPINGS:
                expected: dict[str | None, Decimal] = defaultdict(Decimal)
                for r in inside:
                    if grouping == "day":
                        key: str | None = r["period_start"].strftime("%Y-%m-%d")
                    else:
                        value = r[f"{grouping}_id"]
                        key = None if value is None else str(value)
                    expected[key] += r["amount"]
                found, total = await all_groups(
                    client, "/api/costs", admin, {**query, "group_by": grouping}
                )
                assert found == {k: cents(v) for k, v in expected.items()}, (grouping, since)
                assert total == cents(sum((r["amount"] for r in inside), Decimal(0)))
            # A member sees exactly what is charged to them; a workspace's own report too.
            member = org.headers[Role.member]
            mine = sum((r["amount"] for r in inside if r["user_id"] == users[0]), Decimal(0))
            own = await client.get("/api/costs", headers=member, params=query)
            assert Decimal(own.json()["total"]) == cents(mine)
            first = workspaces[0]
            theirs = sum((r["amount"] for r in inside if r["workspace_id"] == first), Decimal(0))
            one = await client.get(f"/api/workspaces/{first}/costs", headers=admin, params=query)
            assert Decimal(one.json()["total"]) == cents(theirs)
    # Records at windows' edges, read from the records rather than the summary, were seen.
    assert edges > 20


async def metered_org(world: World) -> tuple[Org, uuid.UUID, uuid.UUID]:
    """An org whose member and publisher each ran a workspace for an hour at 2/h."""
    org = await world.org()
    template = await priced_template(world, org, 2)
    mine = await workspace_with_runs(
        world, org, template, [(T0, T0 + timedelta(hours=1))], owner_id=org.users[Role.member]
    )
    theirs = await workspace_with_runs(
        world,
        org,
        template,
        [(T0 + timedelta(minutes=30), T0 + timedelta(minutes=60))],
        owner_id=org.users[Role.publisher],
    )
    await run_pass(world, T0 + timedelta(hours=2))
    return org, mine, theirs


async def test_members_read_their_own_costs_and_admins_and_auditors_all(
    client: httpx.AsyncClient, world: World
) -> None:
    org, mine, theirs = await metered_org(world)
    query = {**WINDOW, "group_by": "workspace"}

    async def report(role: Role, path: str = "/api/costs") -> httpx.Response:
        return await client.get(path, headers=org.headers[role], params=query)

    for role in (Role.admin, Role.auditor):
        body = (await report(role)).json()
        assert body["total"] == "3.00"
        assert {i["key"]: i["amount"] for i in body["items"]} == {
            str(mine): "2.00",
            str(theirs): "1.00",
        }
    member = (await report(Role.member)).json()
    assert member["total"] == "2.00"
    assert [i["key"] for i in member["items"]] == [str(mine)]
    assert (await report(Role.viewer)).json()["total"] == "0.00"

    # One workspace's costs: its owner's, an admin's or an auditor's, no one else's.
    own = await report(Role.member, f"/api/workspaces/{mine}/costs")
    assert own.status_code == 200
    assert own.json()["total"] == "2.00"
    other = await report(Role.member, f"/api/workspaces/{theirs}/costs")
    assert other.status_code == 403
    assert other.headers["content-type"].startswith("application/problem+json")
    audited = await report(Role.auditor, f"/api/workspaces/{theirs}/costs")
    assert audited.json()["total"] == "1.00"
    by_day = await client.get(
        f"/api/workspaces/{mine}/costs",
        headers=org.headers[Role.admin],
        params={**WINDOW, "group_by": "day"},
    )
    assert by_day.json()["items"] == [{"key": T0.strftime("%Y-%m-%d"), "amount": "2.00"}]


async def test_another_tenants_workspace_costs_are_not_found(
    client: httpx.AsyncClient, world: World
) -> None:
    _, mine, _ = await metered_org(world)
    stranger = await world.org()
    response = await client.get(
        f"/api/workspaces/{mine}/costs", headers=stranger.headers[Role.admin]
    )
    assert response.status_code == 404
    everything = await client.get("/api/costs", headers=stranger.headers[Role.admin], params=WINDOW)
    assert everything.json()["total"] == "0.00"


async def test_bad_windows_cursors_and_groupings_are_problems(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    admin = org.headers[Role.admin]
    for params in (
        {"since": WINDOW["until"], "until": WINDOW["since"]},
        {"group_by": "galaxy"},
        {"group_by": "day", "cursor": "bm90LWEtZGF0ZQ"},
        {"group_by": "user", "cursor": "bm90LWEtdXVpZA"},
        {"since": "yesterday"},
        {"since": "2031-03-01T00:00:00"},
        {"since": "0.5"},
        {"until": "0001-01-01T00:00:00+14:00"},
        {"limit": "0"},
    ):
        response = await client.get("/api/costs", headers=admin, params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_the_default_window_is_this_calendar_month(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    body = (await client.get("/api/costs", headers=org.headers[Role.admin])).json()
    since = datetime.fromisoformat(body["since"])
    until = datetime.fromisoformat(body["until"])
    assert (since.day, since.hour, until.day) == (1, 0, 1)
    assert until - since >= timedelta(days=28)
    assert body["currency"] == "USD"
    assert body["total"] == "0.00"
    assert body["items"] == []
