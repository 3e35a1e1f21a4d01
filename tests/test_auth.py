"""Bearer JWT verification: every attack answers 401."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from conftest import JWT_SECRET, World
from factories import make_user
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.models import Role

AUDIENCE = "spawnpoint-api"
ISSUER = "https://issuer.example.test"


def token(claims: dict[str, Any], *, key: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims_for(user_id: uuid.UUID, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"sub": str(user_id), "exp": now + timedelta(minutes=5), "iat": now, **extra}


@pytest.fixture
async def strict_client(
    backend_settings: Settings, database: Database
) -> AsyncIterator[httpx.AsyncClient]:
    """The app configured to require an audience and an issuer."""
    settings = backend_settings.model_copy(update={"jwt_audience": AUDIENCE, "jwt_issuer": ISSUER})
    app = create_app(settings, database=database)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://spawnpoint.test"
    ) as c:
        yield c


async def get_projects(client: httpx.AsyncClient, bearer: str) -> httpx.Response:
    return await client.get("/api/projects", headers={"Authorization": f"Bearer {bearer}"})


async def test_valid_token_is_accepted(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org(roles=(Role.viewer,))
    response = await get_projects(client, token(claims_for(org.users[Role.viewer])))
    assert response.status_code == 200


async def test_tenant_claim_must_match(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org(roles=(Role.viewer,))
    user = org.users[Role.viewer]
    ok = await get_projects(client, token(claims_for(user, tenant_id=str(org.tenant_id))))
    assert ok.status_code == 200
    bad = await get_projects(client, token(claims_for(user, tenant_id=str(uuid.uuid4()))))
    assert bad.status_code == 401


@pytest.mark.parametrize(
    "attack",
    [
        "alg_none",
        "other_hs_algorithm",
        "wrong_secret",
        "expired",
        "missing_exp",
        "future_nbf",
        "sub_not_uuid",
        "unknown_user",
        "inactive_user",
        "garbage",
        "basic_scheme",
    ],
)
# The HS512 forgery signs with the server's own (HS256-sized) secret, which PyJWT warns about.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_attacks_are_refused(client: httpx.AsyncClient, world: World, attack: str) -> None:
    org = await world.org(roles=(Role.admin,))
    user = org.users[Role.admin]
    now = datetime.now(UTC)
    bearer = {
        "alg_none": lambda: jwt.encode(claims_for(user), None, algorithm="none"),
        "other_hs_algorithm": lambda: token(claims_for(user), algorithm="HS512"),
        "wrong_secret": lambda: token(claims_for(user), key="another-secret-" + "y" * 40),
        "expired": lambda: token(claims_for(user, exp=now - timedelta(seconds=5))),
        "missing_exp": lambda: token({"sub": str(user)}),
        "future_nbf": lambda: token(claims_for(user, nbf=now + timedelta(minutes=2))),
        "sub_not_uuid": lambda: token(claims_for(user, sub="admin")),
        "unknown_user": lambda: token(claims_for(uuid.uuid4())),
        "inactive_user": None,
        "garbage": lambda: "not.a.jwt",
        "basic_scheme": None,
    }[attack]
    if attack == "inactive_user":
        inactive = await make_user(
            world.database, org.tenant_id, role=Role.admin, status="disabled"
        )
        response = await get_projects(client, token(claims_for(inactive)))
    elif attack == "basic_scheme":
        response = await client.get(
            "/api/projects", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}
        )
    else:
        assert bearer is not None
        response = await get_projects(client, bearer())
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"aud": AUDIENCE, "iss": ISSUER}, 200),
        ({"aud": "someone-else", "iss": ISSUER}, 401),
        ({"aud": AUDIENCE, "iss": "https://evil.example.test"}, 401),
        ({"iss": ISSUER}, 401),
        ({"aud": AUDIENCE}, 401),
    ],
    ids=["both-right", "wrong-aud", "wrong-iss", "missing-aud", "missing-iss"],
)
async def test_audience_and_issuer_are_checked_when_configured(
    strict_client: httpx.AsyncClient, world: World, extra: dict[str, str], expected: int
) -> None:
    org = await world.org(roles=(Role.viewer,))
    response = await get_projects(strict_client, token(claims_for(org.users[Role.viewer], **extra)))
    assert response.status_code == expected


async def test_role_comes_from_the_database_not_the_token(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(roles=(Role.viewer,))
    forged = token(claims_for(org.users[Role.viewer], role="operator"))
    response = await client.post(
        "/api/projects", headers={"Authorization": f"Bearer {forged}"}, json={"name": "p"}
    )
    assert response.status_code == 403


async def test_dev_bypass_is_ignored_in_production(
    backend_settings: Settings, database: Database
) -> None:
    settings = backend_settings.model_copy(update={"environment": "production"})
    app = create_app(settings, database=database)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://spawnpoint.test"
    ) as prod:
        response = await get_projects(prod, settings.dev_bypass_token)
    assert response.status_code == 401


async def test_dev_bypass_acts_as_demo_admin_with_operator_rights(
    client: httpx.AsyncClient, world: World
) -> None:
    plans = await client.get("/api/plans?limit=200", headers=world.dev)
    assert plans.status_code == 200
    created = await client.post("/api/plans", headers=world.dev, json={"name": f"p-{uuid.uuid4()}"})
    assert created.status_code == 201
