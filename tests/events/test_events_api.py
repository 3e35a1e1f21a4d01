"""GET /api/events: a tenant's outbox, newest first, filtered, paged, never another's."""

from __future__ import annotations

import uuid
from datetime import timedelta, timezone
from typing import Any

import httpx
import pytest

from conftest import Org, World
from events.outbox_rows import BASE, plant_events
from spawnpoint.models import Role

TYPES = [
    "workspace.pending",
    "workspace.running",
    "spawn.refused",
    "workspace.stopped",
    "odd%type",
    "oddXtype",
    "odd_type",
    "oddYtype",
    "Workspace.running",
    "a/b.c",
    "a/bc",
]


async def list_all(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every page of GET /api/events with `params`, in the order served."""
    items: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(100):
        response = await client.get(
            "/api/events", headers=headers, params={**params, "cursor": cursor}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        if body["next_cursor"] is None:
            return items
        cursor = body["next_cursor"]
    raise AssertionError("the pages never ended")


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def errors(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [e["pointer"] for e in response.json()["errors"]]


@pytest.fixture
async def two_orgs(world: World) -> tuple[Org, Org]:
    return await world.org(), await world.org()


async def test_newest_first_and_keyset_pages_cover_every_row_once(
    client: httpx.AsyncClient, world: World, two_orgs: tuple[Org, Org]
) -> None:
    mine, other = two_orgs
    rows = await plant_events(world.database, mine.tenant_id, TYPES)
    await plant_events(world.database, other.tenant_id, TYPES)
    newest_first = [str(row["id"]) for row in reversed(rows)]
    viewer = mine.headers[Role.viewer]

    first = await client.get("/api/events", headers=viewer, params={"limit": 4})
    assert first.status_code == 200, first.text
    assert ids(first.json()["items"]) == newest_first[:4]
    assert first.json()["next_cursor"]

    for limit in (1, 3, 4, len(TYPES), 200):
        paged = await list_all(client, viewer, limit=limit)
        assert ids(paged) == newest_first, limit
    times = [item["created_at"] for item in await list_all(client, viewer)]
    assert times == sorted(times, reverse=True)
    newest = first.json()["items"][0]
    assert newest == {
        "id": newest_first[0],
        "tenant_id": str(mine.tenant_id),
        "type": rows[-1]["type"],
        "key": rows[-1]["key"],
        "payload": rows[-1]["payload"],
        "created_at": rows[-1]["created_at"].isoformat().replace("+00:00", "Z"),
        "published_at": None,
    }


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("workspace.", {"workspace.pending", "workspace.running", "workspace.stopped"}),
        ("workspace.running", {"workspace.running"}),
        ("spawn.", {"spawn.refused"}),
        ("odd%", {"odd%type"}),  # % is literal, no wildcard
        ("odd_", {"odd_type"}),  # so is _
        ("odd", {"odd%type", "oddXtype", "odd_type", "oddYtype"}),
        ("Workspace.", {"Workspace.running"}),  # case counts, on SQLite too
        ("a/b", {"a/b.c", "a/bc"}),  # the escape character is literal as well
        ("a/b.", {"a/b.c"}),
        ("%", set()),
        ("workspace.running.", set()),
    ],
)
async def test_type_filter_is_a_literal_prefix(
    client: httpx.AsyncClient, world: World, prefix: str, expected: set[str]
) -> None:
    org = await world.org(roles=(Role.viewer,))
    rows = await plant_events(world.database, org.tenant_id, TYPES + TYPES)
    newest_first = [str(r["id"]) for r in reversed(rows) if r["type"] in expected]
    for limit in (1, 3, 50):
        found = await list_all(client, org.headers[Role.viewer], type=prefix, limit=limit)
        assert ids(found) == newest_first, limit  # merged across types, each row once
    assert len(newest_first) == 2 * len(expected)


async def test_since_is_inclusive_until_exclusive_in_any_offset(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(roles=(Role.viewer,))
    rows = await plant_events(world.database, org.tenant_id, [f"tick.{i}" for i in range(6)])
    viewer = org.headers[Role.viewer]
    since, until = BASE + timedelta(minutes=2), BASE + timedelta(minutes=4)
    window = [str(rows[3]["id"]), str(rows[2]["id"])]
    utc = await list_all(client, viewer, since=since.isoformat(), until=until.isoformat())
    assert ids(utc) == window
    east = timezone(timedelta(hours=5, minutes=30))
    assert (
        ids(
            await list_all(
                client,
                viewer,
                since=since.astimezone(east).isoformat(),
                until=until.astimezone(east).isoformat(),
            )
        )
        == window
    )
    assert ids(await list_all(client, viewer, since=since.isoformat())) == [
        str(row["id"]) for row in reversed(rows[2:])
    ]
    assert ids(await list_all(client, viewer, until=until.isoformat())) == [
        str(row["id"]) for row in reversed(rows[:4])
    ]
    assert await list_all(client, viewer, since=until.isoformat(), until=until.isoformat()) == []
    combined = await list_all(client, viewer, since=since.isoformat(), type=rows[3]["type"])
    assert ids(combined) == [str(rows[3]["id"])]


@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"since": "2031-05-06T08:00:00Z", "until": "2031-05-06T07:00:00Z"}, "#/query/since"),
        ({"since": "2031-05-06T08:00:00"}, "#/query/since"),  # no offset
        ({"until": "yesterday"}, "#/query/until"),
        ({"until": "0.5"}, "#/query/until"),  # no seconds since 1970
        ({"since": "2031-05-06"}, "#/query/since"),  # no date alone
        ({"since": "2031-05-06 08:00:00Z"}, "#/query/since"),  # RFC 3339 needs its T
        ({"since": "0001-01-01T00:00:00+14:00"}, "#/query/since"),  # before year 1 in UTC
        ({"until": "9999-12-31T23:00:00-14:00"}, "#/query/until"),  # after year 9999
        ({"type": ""}, "#/query/type"),
        ({"type": "a\x00b"}, "#/query/type"),
        ({"type": "has space"}, "#/query/type"),
        ({"type": "x" * 101}, "#/query/type"),
        ({"tenant_id": "not-a-uuid"}, "#/query/tenant_id"),
        ({"kind": "workspace."}, "#/query/kind"),
    ],
)
async def test_bad_filters_are_422_with_a_pointer(
    client: httpx.AsyncClient, world: World, params: dict[str, str], pointer: str
) -> None:
    org = await world.org(roles=(Role.viewer,))
    response = await client.get("/api/events", headers=org.headers[Role.viewer], params=params)
    assert errors(response) == [pointer]


FILTERS: list[dict[str, str]] = [
    {},
    {"type": "workspace."},
    {"type": "spawn.refused"},
    {"type": "odd%"},
    {"since": (BASE - timedelta(days=1)).isoformat()},
    {"until": (BASE + timedelta(days=1)).isoformat()},
    {"since": BASE.isoformat(), "until": (BASE + timedelta(minutes=5)).isoformat(), "limit": "2"},
]


async def test_another_tenants_events_never_appear_through_any_filter(
    client: httpx.AsyncClient, world: World, two_orgs: tuple[Org, Org]
) -> None:
    mine, other = two_orgs
    await plant_events(world.database, mine.tenant_id, TYPES)
    viewer, admin = mine.headers[Role.viewer], mine.headers[Role.admin]
    before = [await list_all(client, viewer, **f) for f in FILTERS]
    theirs = await plant_events(world.database, other.tenant_id, TYPES)
    await plant_events(world.database, None, TYPES)  # platform events: no tenant's either
    their_ids = {str(row["id"]) for row in theirs}
    for filters, seen_before in zip(FILTERS, before, strict=True):
        for headers in (viewer, admin):
            seen = await list_all(client, headers, **filters)
            assert seen == seen_before, filters  # identical whether or not theirs exist
            assert {item["tenant_id"] for item in seen} <= {str(mine.tenant_id)}
            assert not their_ids & set(ids(seen))
    for headers in (viewer, admin):
        for tenant_id in (other.tenant_id, uuid.uuid4()):
            response = await client.get(
                "/api/events", headers=headers, params={"tenant_id": str(tenant_id)}
            )
            assert errors(response) == ["#/query/tenant_id"]
    own = await client.get("/api/events", headers=viewer, params={"tenant_id": str(mine.tenant_id)})
    assert own.status_code == 200
    assert ids(own.json()["items"]) == ids(before[0][:50])


async def test_operators_read_their_own_tenant_unless_they_name_another(
    client: httpx.AsyncClient, world: World, two_orgs: tuple[Org, Org]
) -> None:
    mine, other = two_orgs
    own = await plant_events(world.database, mine.tenant_id, ["a.one", "a.two"])
    theirs = await plant_events(world.database, other.tenant_id, ["b.one", "b.two", "b.three"])
    operator = mine.headers[Role.operator]
    assert ids(await list_all(client, operator)) == [str(r["id"]) for r in reversed(own)]
    named = await list_all(client, operator, tenant_id=str(other.tenant_id), type="b.t")
    assert ids(named) == [str(r["id"]) for r in reversed(theirs) if r["type"].startswith("b.t")]
    assert len(named) == 2
    # Events outlive their tenant, so an unknown tenant is an empty list, not an error.
    assert await list_all(client, operator, tenant_id=str(uuid.uuid4())) == []


async def test_every_role_reads_and_no_credentials_is_401(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    rows = await plant_events(world.database, org.tenant_id, ["x.y"])
    for role in (Role.viewer, Role.member, Role.publisher, Role.admin):
        response = await client.get("/api/events", headers=org.headers[role])
        assert response.status_code == 200, (role, response.text)
        assert ids(response.json()["items"]) == [str(rows[0]["id"])]
    anonymous = await client.get("/api/events")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    forged = await client.get("/api/events", headers={"Authorization": "Bearer nope"})
    assert forged.status_code == 401
