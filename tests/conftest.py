"""Test harness: every test that takes `backend` runs on SQLite and on PostgreSQL.

Each backend gets its own database for the session, built by the real migrations and dropped
at the end. Tests stay independent by creating their own tenants (see `world`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.migrations import upgrade
from spawnpoint.models import Plan, Role, Template, TemplateVersion, Tenant, User
from spawnpoint.security import mint_token
from tcp_proxy import TcpProxies, tcp_proxies

PG_URL = os.environ.get(
    "SPAWNPOINT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
JWT_SECRET = "test-secret-" + "x" * 40
# A fixed Ed25519 key (base64 of 32 bytes), so production-mode settings are complete.
AUDIT_SIGNING_KEY = "dGVzdC1hdWRpdC1rZXktMzItYnl0ZXMtbG9uZy4uLi4="
DRY_RUN_SPEC: dict[str, object] = {
    "command": None,
    "image": "example/scenario:1",
    "cpu": 1.0,
    "memory_mb": 512,
    "storage_gb": 1,
    "ports": [],
    "env": {},
    "idle_timeout_minutes": None,
    "max_lifetime_days": None,
    "hourly_cost": 0.0,
    "restricted": False,
}
BACKENDS = ["sqlite", "postgres"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.backend("postgres")`: a test about one database's own behaviour (heap-only
    updates, the embedded mode) runs with that backend only; its other parametrisations are
    deselected at collection, so no skip hides in the report."""
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("backend")
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("backend_settings") if callspec is not None else None
        (drop if marker and param is not None and param not in marker.args else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


NO_TEMPLATE = uuid.UUID(int=0)


def pg_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_or_skip() -> None:
    try:
        psycopg.connect(pg_conninfo(PG_URL), connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL is not reachable at {PG_URL}: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: PostgreSQL tests are mandatory)", pytrace=False)
        pytest.skip(f"{message}; set SPAWNPOINT_TEST_PG_URL or start PostgreSQL")


class PostgresDatabase:
    """A throwaway database on the test server, created and dropped by the harness."""

    def __init__(self, prefix: str = "spawnpoint_test") -> None:
        self.name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.url = make_url(PG_URL).set(database=self.name).render_as_string(hide_password=False)

    def __enter__(self) -> PostgresDatabase:
        with psycopg.connect(pg_conninfo(PG_URL), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *_: object) -> None:
        with psycopg.connect(pg_conninfo(PG_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "jwt_secret": JWT_SECRET,
        "audit_signing_key": AUDIT_SIGNING_KEY,
        "environment": "development",
        # The whole suite shares one app, one client address and a few principals (the dev
        # token): limits it would reach by volume alone. tests/auth sets its own.
        "rate_limit_per_minute": 1_000_000,
        "rate_limit_tenant_per_minute": 1_000_000,
        "login_failures_per_ip": 1_000_000,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings for a database of this test's own, not migrated (migration tests)."""
    if request.param == "sqlite":
        yield make_settings(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", tmp_path)
        return
    postgres_or_skip()
    with PostgresDatabase(prefix="spawnpoint_empty") as pg:
        yield make_settings(pg.url, tmp_path)


@pytest.fixture(scope="session", params=BACKENDS)
def backend_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    data_dir = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        settings = make_settings(f"sqlite+aiosqlite:///{data_dir / 'test.db'}", data_dir)
        upgrade(settings)
        yield settings
        return
    postgres_or_skip()
    with PostgresDatabase() as pg:
        settings = make_settings(pg.url, data_dir)
        upgrade(settings)
        yield settings


@pytest.fixture(scope="session")
async def database(backend_settings: Settings) -> AsyncIterator[Database]:
    db = Database(backend_settings.sqlalchemy_url, pool_size=20)
    yield db
    await db.dispose()


@pytest.fixture(scope="session")
def backend(backend_settings: Settings) -> str:
    return "sqlite" if backend_settings.sqlalchemy_url.startswith("sqlite") else "postgres"


@pytest.fixture(scope="session")
async def client(
    backend_settings: Settings, database: Database
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(backend_settings, database=database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spawnpoint.test") as c:
        yield c


@dataclass
class Org:
    """A tenant with one user per role, each with a ready bearer header."""

    tenant_id: uuid.UUID
    plan_id: uuid.UUID
    template_id: uuid.UUID = NO_TEMPLATE
    users: dict[Role, uuid.UUID] = field(default_factory=dict)
    headers: dict[Role, dict[str, str]] = field(default_factory=dict)


@dataclass
class World:
    settings: Settings
    database: Database

    async def org(self, *, roles: tuple[Role, ...] = tuple(Role), **plan: object) -> Org:
        """Create a plan, a tenant on it and a user for each of `roles`."""
        suffix = uuid.uuid4().hex[:10]
        async with self.database.transaction(write=True) as session:
            plan_row = Plan(
                name=f"plan-{suffix}",
                max_workspaces=plan.get("max_workspaces", 5),
                max_cpu=plan.get("max_cpu", 8),
                max_memory_mb=plan.get("max_memory_mb", 16384),
                max_storage_gb=plan.get("max_storage_gb", 100),
                max_concurrent_jobs=plan.get("max_concurrent_jobs", 5),
                max_jobs_per_day=plan.get("max_jobs_per_day", 500),
                monthly_budget=plan.get("monthly_budget", 0),
            )
            session.add(plan_row)
            await session.flush()
            tenant = Tenant(name=f"tenant-{suffix}", slug=f"t-{suffix}", plan_id=plan_row.id)
            session.add(tenant)
            await session.flush()
            template = Template(tenant_id=tenant.id, name=f"dry-{suffix}", provisioner="dry-run")
            session.add(template)
            await session.flush()
            session.add(
                TemplateVersion(
                    template_id=template.id,
                    version=1,
                    tenant_id=tenant.id,
                    provisioner="dry-run",
                    spec=DRY_RUN_SPEC,
                )
            )
            org = Org(tenant_id=tenant.id, plan_id=plan_row.id, template_id=template.id)
            for role in roles:
                user = User(
                    tenant_id=tenant.id, email=f"{role.value}-{suffix}@example.test", role=role
                )
                session.add(user)
                await session.flush()
                org.users[role] = user.id
                org.headers[role] = self.bearer(user.id)
        return org

    def bearer(self, user_id: uuid.UUID, **claims: object) -> dict[str, str]:
        token = mint_token(self.settings, user_id=user_id)
        return {"Authorization": f"Bearer {token}"}

    @property
    def dev(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.dev_bypass_token}"}


@pytest.fixture
def world(backend_settings: Settings, database: Database) -> World:
    return World(settings=backend_settings, database=database)


@pytest.fixture
async def tcp_proxy() -> AsyncIterator[TcpProxies]:
    """`await tcp_proxy(host, port)` -> a TcpProxy (tests/tcp_proxy.py), closed after the test."""
    async with tcp_proxies() as proxies:
        yield proxies
