"""List routes never leak across tenants, generated from the app's route table.

For every GET route answering a page (`items`, `next_cursor`), tenant A's admin queries
with every filter the route accepts set to tenant B's ids (every kind of id, in every
uuid filter), to each enum value, and to random ids. B's ids never appear in a response,
and each response, page by page with its cursors, is identical to the one A got for
random ids before B existed: whether B exists is not observable through a list.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from conftest import Org, World
from factories import make_project, make_template, make_user, plant_workspace, unique
from routes import api_routes, own_params
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.kit.errors import NotFound
from spawnpoint.kit.inserts import with_defaults
from spawnpoint.kit.pagination import PageParams
from spawnpoint.migrations import downgrade, upgrade
from spawnpoint.models import Role, Template, TemplateVersion, User, WorkspaceEvent, WorkspaceState
from spawnpoint.scope import TenantScope
from spawnpoint.templates.repository import TemplateRepository
from spawnpoint.users.repository import AccountRepository
from spawnpoint.workspaces.repository import WorkspaceRepository

PAGE_SIZE = 2
MAX_PAGES = 25
NOT_FILTERS = {"limit", "cursor"}
# Values that filter by time or text and name no tenant: the same before and after B.
SINCE, UNTIL = "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
TEXT_VALUES = ("workspace.", "x")
BEFORE_0009 = "20240608_0008_audit"
DEMO_TENANT = uuid.UUID("00000000-0000-0000-0000-000000000001")
DEMO_TEMPLATE = uuid.UUID("00000000-0000-0000-0000-000000000100")
VERSION_COLUMNS = ("template_id", "version", "provisioner", "spec", "created_at")


@dataclass(frozen=True)
class Filter:
    name: str
    kind: str  # "uuid", "enum", "date-time", "boolean", "text"
    choices: tuple[str, ...] = ()


def _flatten(schema: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a parameter's schema, `$ref`s resolved, `null` dropped."""
    if "$ref" in schema:
        return _flatten(components[schema["$ref"].rsplit("/", 1)[1]], components)
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives:
        return [s for alt in alternatives for s in _flatten(alt, components)]
    return [] if schema.get("type") == "null" else [schema]


def _filter(parameter: dict[str, Any], components: dict[str, Any]) -> Filter:
    name = parameter["name"]
    for schema in _flatten(parameter.get("schema", {}), components):
        if "enum" in schema:
            return Filter(name, "enum", tuple(str(v) for v in schema["enum"]))
        if schema.get("format") in {"uuid", "date-time"}:
            return Filter(name, schema["format"])
        if schema.get("type") == "boolean":
            return Filter(name, "boolean")
    return Filter(name, "text")


def list_routes(settings: Settings) -> list[tuple[str, list[Filter]]]:
    """Every GET route whose 200 answer is a page, with the query filters it accepts."""
    document = create_app(settings).openapi()
    components = document.get("components", {}).get("schemas", {})
    found = []
    for method, path in api_routes(create_app(settings)):
        operation = document["paths"][path][method.lower()]
        if method != "GET":
            continue
        content = operation.get("responses", {}).get("200", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        shapes = _flatten(schema, components)
        if not any({"items", "next_cursor"} <= set(s.get("properties", {})) for s in shapes):
            continue
        filters = [
            _filter(p, components)
            for p in operation.get("parameters", [])
            if p["in"] == "query" and p["name"] not in NOT_FILTERS
        ]
        found.append((path, filters))
    return found


@dataclass
class Rows:
    """One tenant's objects of every kind that lists show, made through the API."""

    org: Org
    ids: dict[str, uuid.UUID]

    @property
    def admin(self) -> dict[str, str]:
        return self.org.headers[Role.admin]


async def populate(client: httpx.AsyncClient, world: World) -> Rows:
    org = await world.org()
    admin = org.headers[Role.admin]

    async def created(path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
        response = await client.post(path, headers=admin, json=body)
        assert response.status_code == status, response.text
        document: dict[str, Any] = response.json()
        return document

    project = await created("/api/projects", {"name": unique("project")})
    user = await created("/api/users", {"email": f"{unique('u')}@example.test"})
    template = await created(
        "/api/templates",
        {"name": unique("template"), "provisioner": "dry-run", "spec": {"cpu": 1}},
    )
    artifact = await created(
        "/api/artifacts", {"name": unique("artifact"), "type": "note", "content": "eA=="}
    )
    spawned = await created(
        "/api/spawn",
        {"template_id": template["id"], "project_id": project["id"], "external_ref": unique("p")},
        status=202,
    )
    running = await plant_workspace(
        world.database,
        org,
        template_id=uuid.UUID(template["id"]),
        owner_id=org.users[Role.member],
        project_id=uuid.UUID(project["id"]),
    )
    # Budgets on the tenant and the project: lists of budgets, and the workspaces' lifecycle
    # (the budgets covering them), must not show them to another tenant.
    budget = await created("/api/budgets", {"scope": "tenant", "limit": 100})
    await created("/api/budgets", {"scope": "project", "scope_id": project["id"], "limit": 50})
    return Rows(
        org,
        {
            "tenant": org.tenant_id,
            "plan": org.plan_id,
            "user": uuid.UUID(user["id"]),
            "member": org.users[Role.member],
            "project": uuid.UUID(project["id"]),
            "template": uuid.UUID(template["id"]),
            "artifact": uuid.UUID(artifact["id"]),
            "workspace": uuid.UUID(spawned["workspace"]["id"]),
            "job": uuid.UUID(spawned["job_id"]),
            "running": running,
            "budget": uuid.UUID(budget["id"]),
        },
    )


def queries(filters: list[Filter], ids: list[uuid.UUID]) -> list[dict[str, str]]:
    """No filter, then each filter alone with each value: every id filter gets every id."""
    found: list[dict[str, str]] = [{}]
    for f in filters:
        if f.kind == "uuid":
            values = [str(i) for i in ids]
        elif f.kind == "enum":
            values = list(f.choices)
        elif f.kind == "date-time":
            values = [SINCE, UNTIL]
        elif f.kind == "boolean":
            values = ["true", "false"]
        else:
            # Text filters may hold ids too (`resource_id`, `actor_id` as strings).
            values = [*TEXT_VALUES, *(str(i) for i in ids)]
        found += [{f.name: value} for value in values]
    return found


async def walk(
    client: httpx.AsyncClient, path: str, params: dict[str, str], headers: dict[str, str]
) -> list[tuple[int, Any]]:
    """Every page of `path` with `params`, PAGE_SIZE at a time: (status, body) each."""
    pages: list[tuple[int, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        query = {**params, "limit": str(PAGE_SIZE), **({"cursor": cursor} if cursor else {})}
        response = await client.get(path, params=query, headers=headers)
        pages.append((response.status_code, response.json()))
        if response.status_code != 200:
            return pages
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return pages
    pytest.fail(f"{path} {params}: more than {MAX_PAGES} pages")


async def test_list_routes_never_show_another_tenant(
    client: httpx.AsyncClient, world: World, backend_settings: Settings
) -> None:
    routes = list_routes(backend_settings)
    assert {"/api/workspaces", "/api/users", "/api/projects", "/api/artifacts"} <= {
        path for path, _ in routes
    }
    mine = await populate(client, world)
    # Random ids stand in for B's before B exists; one per kind of id B will have.
    random_ids = {kind: uuid.uuid4() for kind in mine.ids}
    urls = {}
    for path, _ in routes:
        urls[path] = path.format(**await own_params(world, mine.org, "GET", path, Role.admin))

    before: dict[tuple[str, int], list[tuple[int, Any]]] = {}
    for path, filters in routes:
        for n, params in enumerate(queries(filters, list(random_ids.values()))):
            before[(path, n)] = await walk(client, urls[path], params, mine.admin)

    theirs = await populate(client, world)
    leaks: list[str] = []
    changed: list[str] = []
    for path, filters in routes:
        for ids in (list(theirs.ids.values()), list(random_ids.values())):
            for n, params in enumerate(queries(filters, ids)):
                pages = await walk(client, urls[path], params, mine.admin)
                text = repr(pages)
                leaks += [
                    f"{path} {params}: {kind} {value}"
                    for kind, value in theirs.ids.items()
                    if str(value) in text
                ]
                if pages != before[(path, n)]:
                    changed.append(f"{path} {params}: {pages} != {before[(path, n)]}")
    assert leaks == []
    assert changed == []
    # The lists did show A's own rows, so the comparison compared something.
    own = await client.get("/api/workspaces", params={"limit": 200}, headers=mine.admin)
    assert {mine.ids["workspace"], mine.ids["running"]} <= {
        uuid.UUID(w["id"]) for w in own.json()["items"]
    }


@pytest.mark.parametrize("path", ["/api/users", "/api/projects"])
async def test_tenant_id_filter_naming_no_visible_tenant_is_422(
    client: httpx.AsyncClient, world: World, path: str
) -> None:
    mine, theirs = await world.org(), await world.org()
    admin = mine.headers[Role.admin]
    other = await client.get(path, params={"tenant_id": str(theirs.tenant_id)}, headers=admin)
    nobody = await client.get(path, params={"tenant_id": str(uuid.uuid4())}, headers=admin)
    assert other.status_code == nobody.status_code == 422
    assert other.json() == nobody.json()
    assert other.json()["errors"][0]["pointer"] == "#/query/tenant_id"
    own = await client.get(path, params={"tenant_id": str(mine.tenant_id)}, headers=admin)
    assert own.status_code == 200
    assert (await client.get(path, headers=admin)).json() == own.json()

    # Operators see every tenant: B's id lists B's rows; an id nobody has is still 422.
    operator = mine.headers[Role.operator]
    if path == "/api/projects":
        await make_project(world.database, theirs.tenant_id)
    listed = await client.get(
        path, params={"tenant_id": str(theirs.tenant_id), "limit": 200}, headers=operator
    )
    assert listed.status_code == 200
    assert listed.json()["items"]
    assert {item["tenant_id"] for item in listed.json()["items"]} == {str(theirs.tenant_id)}
    unknown = await client.get(path, params={"tenant_id": str(uuid.uuid4())}, headers=operator)
    assert unknown.status_code == 422


async def test_child_reads_scope_by_their_own_tenant_id(world: World) -> None:
    """Versions and events stay hidden even when the caller never checked the parent."""
    mine, theirs = await world.org(), await world.org()
    template_id = await make_template(world.database, theirs.tenant_id)
    workspace_id = await plant_workspace(world.database, theirs, template_id=template_id)
    owner = await make_user(world.database, theirs.tenant_id)
    async with world.database.transaction(write=True) as session:
        session.add(
            WorkspaceEvent(
                workspace_id=workspace_id,
                tenant_id=theirs.tenant_id,
                from_state=WorkspaceState.running,
                to_state=WorkspaceState.stopping,
                actor="user",
                actor_id=owner,
            )
        )
    visitor = TenantScope(tenant_id=mine.tenant_id, all_tenants=False)
    owner_scope = TenantScope(tenant_id=theirs.tenant_id, all_tenants=False)
    params = PageParams(limit=50, cursor=None)
    async with world.database.transaction(write=False) as session:
        for scope, expected in ((visitor, 0), (owner_scope, 1)):
            templates = TemplateRepository(session, scope)
            versions, _ = await templates.page_versions(template_id, params)
            assert len(versions) == expected
            events, _ = await WorkspaceRepository(session, scope).page_events(workspace_id, params)
            assert len(events) == expected
        with pytest.raises(NotFound):
            await TemplateRepository(session, visitor).get_version(template_id, 1)
        found = await TemplateRepository(session, owner_scope).get_version(template_id, 1)
        assert found.tenant_id == theirs.tenant_id


async def test_platform_template_versions_have_no_tenant_and_every_tenant_reads_them(
    world: World,
) -> None:
    platform = await make_template(world.database, None)
    mine = await world.org()
    scope = TenantScope(tenant_id=mine.tenant_id, all_tenants=False)
    async with world.database.transaction(write=False) as session:
        version = await TemplateRepository(session, scope).get_version(platform, 1)
        assert version.tenant_id is None
        stored = await session.scalar(
            select(TemplateVersion.tenant_id).where(TemplateVersion.template_id == platform)
        )
        assert stored is None


def test_migration_0009_copies_each_versions_tenant_from_its_template(
    empty_database: Settings,
) -> None:
    """The demo template's versions get the demo tenant; a platform template's stay NULL."""
    upgrade(empty_database, BEFORE_0009)
    url = make_url(empty_database.sqlalchemy_url)
    sqlite = url.drivername.startswith("sqlite")
    engine = create_engine(url.set(drivername="sqlite" if sqlite else "postgresql+psycopg"))
    platform = uuid.uuid4()
    now = datetime.now(UTC)
    # The columns as of revision 0008: the model has one more now.
    versions = sa.table(
        "template_versions",
        *(sa.column(n, TemplateVersion.__table__.c[n].type) for n in VERSION_COLUMNS),
    )
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.insert(Template).values(
                    with_defaults(
                        Template,
                        {"id": platform, "tenant_id": None, "name": "p", "provisioner": "dry-run"},
                    )
                )
            )
            connection.execute(
                sa.insert(versions).values(
                    template_id=platform, version=1, provisioner="dry-run", spec={}, created_at=now
                )
            )
        upgrade(empty_database)
        with engine.connect() as connection:
            rows = dict(
                connection.execute(
                    sa.select(TemplateVersion.template_id, TemplateVersion.tenant_id)
                ).all()
            )
        assert rows == {DEMO_TEMPLATE: DEMO_TENANT, platform: None}
        downgrade(empty_database, BEFORE_0009)
        with engine.connect() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("template_versions")}
        assert "tenant_id" not in columns
    finally:
        engine.dispose()


async def test_sign_in_lookups_are_unscoped_on_purpose(world: World) -> None:
    """Before a caller is known there is no tenant to scope by: the lookups find anyone's."""
    org = await world.org()
    user_id = org.users[Role.viewer]
    async with world.database.transaction(write=False) as session:
        accounts = AccountRepository(session)
        row = await accounts.account(user_id)
        assert row is not None
        assert row[0] == org.tenant_id
        user = await session.get(User, user_id)
        assert user is not None
        found = await accounts.by_email(user.email.upper())
        assert found is not None
        assert found.id == user_id
        assert await accounts.account(uuid.uuid4()) is None
