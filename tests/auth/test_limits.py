"""Login throttling, rate limits (memory and a real Redis), CORS and the body limit."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from auth_support import app_client, entries
from limits.aio.storage import RedisStorage, Storage

from conftest import IN_CI, World
from factories import unique
from identity_factories import KNOWN_PASSWORD, login_account, login_email
from polling import eventually
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.kit.metrics import RATE_LIMIT_FALLBACKS
from spawnpoint.kit.ratelimit import Counters, Hit, MemoryStorage
from spawnpoint.models import Role
from tcp_proxy import TcpProxies

LOGIN = "/api/v1/auth/login"
REDIS_URL = "redis://127.0.0.1:6379/0"


async def test_brute_force_on_one_account_gets_429_and_the_right_password_too(
    backend_settings: Settings, database: Database, world: World
) -> None:
    org = await world.org(roles=())
    await login_account(database, org.tenant_id)
    email = login_email(org.tenant_id)
    async with app_client(
        backend_settings, database, login_failures_per_account=3, client_ip="10.0.0.1"
    ) as (_, client):
        for _ in range(3):
            wrong = await client.post(LOGIN, json={"email": email, "password": "guess guess"})
            assert wrong.status_code == 401
        request_id = f"locked-{org.tenant_id}"
        locked = await client.post(
            LOGIN,
            json={"email": email, "password": "guess guess"},
            headers={"X-Request-ID": request_id},
        )
        assert locked.status_code == 429
        assert locked.headers["content-type"] == "application/problem+json"
        assert 1 <= int(locked.headers["Retry-After"]) <= 15 * 60
        # Locked means locked: the right password changes nothing, so it reveals nothing.
        right = await client.post(LOGIN, json={"email": email, "password": KNOWN_PASSWORD})
        assert right.status_code == 429
        # Another account from the same address is not locked.
        other = await world.org(roles=())
        await login_account(database, other.tenant_id)
        fine = await client.post(
            LOGIN, json={"email": login_email(other.tenant_id), "password": KNOWN_PASSWORD}
        )
        assert fine.status_code == 200
    (entry,) = await entries(database, request_id)
    assert (entry.action, entry.result, entry.details["status"]) == ("auth.login", "denied", 429)


async def test_brute_force_from_one_address_gets_429_across_accounts(
    backend_settings: Settings, database: Database
) -> None:
    async with app_client(
        backend_settings, database, login_failures_per_ip=4, client_ip="10.0.0.2"
    ) as (_, client):
        statuses = [
            (
                await client.post(
                    LOGIN,
                    json={"email": f"{unique('spray')}@example.test", "password": "password1234"},
                )
            ).status_code
            for _ in range(5)
        ]
        assert statuses == [401, 401, 401, 401, 429]
    async with app_client(
        backend_settings, database, login_failures_per_ip=4, client_ip="10.0.0.3"
    ) as (_, client):
        other_address = await client.post(
            LOGIN, json={"email": f"{unique('spray')}@example.test", "password": "password1234"}
        )
        assert other_address.status_code == 401


async def test_authenticated_routes_are_rate_limited_per_principal(
    backend_settings: Settings, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.viewer, Role.member))
    async with app_client(backend_settings, database, rate_limit_per_minute=3) as (_, client):
        viewer = org.headers[Role.viewer]
        answers = [await client.get("/api/projects", headers=viewer) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert answers[0].headers["RateLimit-Limit"] == "3"
        assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
        assert 1 <= int(answers[0].headers["RateLimit-Reset"]) <= 60
        refused = await client.get("/api/projects", headers=viewer)
        if refused.status_code == 200:
            # The minute turned between the requests: a new window; exhaust it again.
            for _ in range(3):
                refused = await client.get("/api/projects", headers=viewer)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["RateLimit-Remaining"] == "0"
        # Another principal has a counter of its own; health and docs are never limited.
        assert (
            await client.get("/api/projects", headers=org.headers[Role.member])
        ).status_code == 200
        for _ in range(5):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/openapi.json")).status_code == 200
        assert "RateLimit-Limit" not in (await client.get("/health")).headers


async def test_a_refused_write_writes_one_denied_entry(
    backend_settings: Settings, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.admin,))
    admin = org.headers[Role.admin]
    async with app_client(backend_settings, database, rate_limit_per_minute=1) as (_, client):
        statuses = []
        for n in range(3):
            response = await client.post(
                "/api/projects",
                json={"name": unique("p")},
                headers={**admin, "X-Request-ID": f"flood-{n}-{org.tenant_id}"},
            )
            statuses.append(response.status_code)
    assert 429 in statuses
    n = statuses.index(429)
    (entry,) = await entries(database, f"flood-{n}-{org.tenant_id}")
    assert (entry.action, entry.result, entry.details["status"]) == (
        "project.create",
        "denied",
        429,
    )


async def test_a_tenant_shares_one_limit_across_its_principals(
    backend_settings: Settings, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.viewer, Role.member, Role.admin))
    async with app_client(
        backend_settings, database, rate_limit_per_minute=100, rate_limit_tenant_per_minute=4
    ) as (_, client):
        statuses = []
        for _ in range(2):
            for role in (Role.viewer, Role.member, Role.admin):
                response = await client.get("/api/projects", headers=org.headers[role])
                statuses.append(response.status_code)
    assert 429 in statuses
    assert statuses.count(200) <= 8  # at most two windows' worth, if the minute turned


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own in the real Redis; its keys are deleted after."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (aioredis.ConnectionError, OSError) as exc:
        await client.aclose()
        if IN_CI:
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}", pytrace=False)
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    prefix = f"spawnpoint-test-{uuid.uuid4().hex}"
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_two_app_instances_share_the_limit_through_redis(
    backend_settings: Settings, database: Database, world: World, redis_prefix: str
) -> None:
    org = await world.org(roles=(Role.viewer,))
    viewer = org.headers[Role.viewer]
    # The limit counts per clock minute: should the minute turn between the two first
    # requests, the second attempt (new keys) starts in the new one and cannot meet another.
    for attempt in range(2):
        settings = {"redis_url": REDIS_URL, "rate_limit_key_prefix": f"{redis_prefix}{attempt}"}
        async with (
            app_client(backend_settings, database, rate_limit_per_minute=4, **settings) as (_, a),
            app_client(backend_settings, database, rate_limit_per_minute=4, **settings) as (_, b),
        ):
            first = await a.get("/api/projects", headers=viewer)
            second = await b.get("/api/projects", headers=viewer)
            assert (first.status_code, second.status_code) == (200, 200)
            remaining = (
                int(first.headers["RateLimit-Remaining"]),
                int(second.headers["RateLimit-Remaining"]),
            )
            if remaining != (3, 2) and attempt == 0:
                continue
            assert remaining == (3, 2)  # b saw a's request: one counter for both
            assert (await a.get("/api/projects", headers=viewer)).status_code == 200
            assert (await b.get("/api/projects", headers=viewer)).status_code == 200
            refused = await a.get("/api/projects", headers=viewer)
            assert refused.status_code == 429
            assert "Retry-After" in refused.headers
            break
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert [key async for key in client.scan_iter(match=f"{redis_prefix}*")]
    finally:
        await client.aclose()


async def test_cors_preflight_answers_configured_origins_only(
    backend_settings: Settings, database: Database
) -> None:
    origin = "https://console.example.test"
    async with app_client(
        backend_settings, database, cors_origins=f"{origin}, https://other.example.test"
    ) as (_, client):
        preflight = await client.options(
            "/api/projects",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        stranger = await client.options(
            "/api/projects",
            headers={"Origin": "https://evil.example.test", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in stranger.headers
        simple = await client.get("/health", headers={"Origin": origin})
        assert simple.headers["access-control-allow-origin"] == origin
    async with app_client(backend_settings, database) as (_, client):
        none = await client.get("/health", headers={"Origin": origin})
        assert "access-control-allow-origin" not in none.headers


async def test_an_oversized_json_body_is_a_413_problem(
    backend_settings: Settings, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.admin,))
    async with app_client(backend_settings, database, max_body_bytes=1024) as (_, client):
        big = {"name": "x", "description": "y" * 2000}
        for path in ("/api/v1/projects", LOGIN, "/api/v1/auth/register"):
            response = await client.post(path, json=big, headers=org.headers[Role.admin])
            assert response.status_code == 413, (path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        fits = await client.post(
            "/api/v1/projects", json={"name": unique("small")}, headers=org.headers[Role.admin]
        )
        assert fits.status_code == 201


async def test_public_auth_routes_are_limited_per_client_address(
    backend_settings: Settings, database: Database
) -> None:
    async with app_client(
        backend_settings, database, rate_limit_per_minute=2, client_ip="10.0.0.9"
    ) as (_, client):
        answers = [
            await client.post("/api/v1/auth/refresh", json={"refresh_token": "nope"})
            for _ in range(2)
        ]
        assert [a.status_code for a in answers] == [401, 401]
        assert answers[0].headers["RateLimit-Limit"] == "2"
        refused = await client.post("/api/v1/auth/refresh", json={"refresh_token": "nope"})
        if refused.status_code == 401:  # the minute turned: a fresh window
            for _ in range(2):
                refused = await client.post("/api/v1/auth/refresh", json={"refresh_token": "x"})
        assert refused.status_code == 429
        assert "Retry-After" in refused.headers


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_one_requests_counters_count_alike_in_memory_and_in_redis(
    kind: str, redis_prefix: str
) -> None:
    storage: Storage = MemoryStorage()
    if kind == "redis":  # one script for all the request's keys
        storage = RedisStorage(
            "async+" + REDIS_URL, implementation="redispy", key_prefix=redis_prefix
        )
    counters = Counters(storage)
    hits = [Hit("rate", "user:1", 5, 60), Hit("tenant", "tenant:1", 2, 60)]
    first = await counters.hit_all(hits)
    second = await counters.hit_all(hits)
    third = await counters.hit_all(hits)
    assert [w.remaining for w in first] == [4, 1]
    assert [w.remaining for w in second] == [3, 0]
    assert [w.remaining for w in third] == [2, -1]
    assert [w.exceeded for w in third] == [False, True]
    # The counts sit where the library itself reads them, and each key expires.
    assert [await storage.get(w.key) for w in third] == [3, 3]
    for window in third:
        assert 0 < await storage.get_expiry(window.key) - time.time() <= 61
        assert 1 <= window.reset <= 60
    await counters.give_back(third[1], seconds=60)
    assert await storage.get(third[1].key) == 2


async def test_redis_cut_off_limits_in_memory_and_never_fails_a_request(
    backend_settings: Settings,
    database: Database,
    world: World,
    redis_prefix: str,
    tcp_proxy: TcpProxies,
) -> None:
    proxy = await tcp_proxy("127.0.0.1", 6379)
    org = await world.org(roles=(Role.viewer,))
    viewer = org.headers[Role.viewer]
    settings = {
        "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
        "rate_limit_key_prefix": redis_prefix,
        "rate_limit_per_minute": 3,
        "rate_limit_redis_timeout_seconds": 0.2,
    }
    fallbacks = RATE_LIMIT_FALLBACKS._value.get()
    async with app_client(backend_settings, database, **settings) as (_, client):
        assert (await client.get("/api/projects", headers=viewer)).status_code == 200
        await proxy.cut()
        # Counted in this process's memory now: answered, with headers, and still limited.
        answers = [await client.get("/api/projects", headers=viewer) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["RateLimit-Remaining"] for a in answers[:3]] == ["2", "1", "0"]
        assert "Retry-After" in answers[3].headers
        assert RATE_LIMIT_FALLBACKS._value.get() > fallbacks
        await proxy.restore()

        async def counted_in_redis_again() -> bool:
            before = await redis_count(redis_prefix)
            await client.get("/api/projects", headers=viewer)
            return await redis_count(redis_prefix) > before

        await eventually(counted_in_redis_again, what="the counters to be back in Redis")


async def redis_count(prefix: str) -> int:
    """The sum of the rate-limit counters under `prefix`."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        return sum(int(v) for v in await client.mget(keys) if v is not None) if keys else 0
    finally:
        await client.aclose()
