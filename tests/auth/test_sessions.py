"""Register, log in, refresh, log out, me, passwords: on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import httpx
from argon2 import Type, extract_parameters
from auth_support import app_client, entries
from sqlalchemy import select

from conftest import World
from factories import unique
from identity_factories import KNOWN_PASSWORD, OTHER_PASSWORD, login_account, login_email
from spawnpoint.auth.passwords import Passwords
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.models import Credential, Role

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
REGISTER = "/api/v1/auth/register"
ME = "/api/v1/auth/me"


async def login(
    client: httpx.AsyncClient, email: str, password: str = KNOWN_PASSWORD
) -> httpx.Response:
    return await client.post(LOGIN, json={"email": email, "password": password})


def bearer(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def stored_hash(database: Database, user_id: uuid.UUID | str) -> str:
    async with database.transaction(write=False) as session:
        found = await session.execute(
            select(Credential.password_hash).where(Credential.user_id == uuid.UUID(str(user_id)))
        )
        return found.scalar_one()


async def test_open_registration_makes_a_tenant_with_the_person_as_its_admin(
    client: httpx.AsyncClient, backend_settings: Settings
) -> None:
    email = f"{unique('open')}@example.test"
    name = unique("Acme")
    created = await client.post(
        REGISTER,
        json={"email": email, "password": KNOWN_PASSWORD, "tenant_name": name, "display_name": "A"},
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert (user["email"], user["role"], user["display_name"]) == (email, "admin", "A")
    assert "password" not in created.text
    tokens = (await login(client, email)).json()
    me = await client.get(ME, headers=bearer(tokens))
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user"]["id"] == user["id"]
    assert body["tenant"]["name"] == name
    assert body["role"] == "admin"
    assert body["plan"]["id"] == str(backend_settings.default_plan_id)
    assert body["plan"]["max_workspaces"] >= 0

    again = await client.post(REGISTER, json={"email": email.upper(), "password": KNOWN_PASSWORD})
    assert again.status_code == 409
    assert again.json()["detail"] == "This email cannot be registered."


async def test_invite_registration_joins_the_inviting_tenant_with_the_invited_role(
    backend_settings: Settings, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.admin,))
    email = f"{unique('invited')}@example.test"
    async with app_client(backend_settings, database, registration="invite") as (_, client):
        invite = await client.post(
            "/api/invites",
            json={"email": email, "role": "publisher"},
            headers=org.headers[Role.admin],
        )
        assert invite.status_code == 201, invite.text
        token = invite.json()["token"]
        body = {"email": email, "password": KNOWN_PASSWORD}
        assert (await client.post(REGISTER, json=body)).status_code == 403
        other = {"email": f"{unique('other')}@example.test", "password": KNOWN_PASSWORD}
        refused = await client.post(REGISTER, json={**other, "invite_token": token})
        assert refused.status_code == 403
        joined = await client.post(REGISTER, json={**body, "invite_token": token})
        assert joined.status_code == 201, joined.text
        assert joined.json()["tenant_id"] == str(org.tenant_id)
        assert joined.json()["role"] == "publisher"
        reused = await client.post(
            REGISTER,
            json={
                "email": f"{unique('x')}@example.test",
                "password": KNOWN_PASSWORD,
                "invite_token": token,
            },
        )
        assert reused.status_code == 403
        listed = await client.get("/api/invites", headers=org.headers[Role.admin])
        (row,) = [i for i in listed.json()["items"] if i["id"] == invite.json()["id"]]
        assert row["accepted_at"] is not None
        assert "token" not in row


async def test_an_invite_cannot_outrank_its_creator(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(roles=(Role.admin,))
    for role in ("operator",):
        refused = await client.post(
            "/api/invites",
            json={"email": f"{unique('i')}@example.test", "role": role},
            headers=org.headers[Role.admin],
        )
        assert refused.status_code == 403


async def test_closed_registration_refuses_everyone(
    backend_settings: Settings, database: Database
) -> None:
    async with app_client(backend_settings, database, registration="closed") as (_, client):
        response = await client.post(
            REGISTER, json={"email": f"{unique('c')}@example.test", "password": KNOWN_PASSWORD}
        )
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


def test_registration_defaults_to_invite_in_production_and_open_in_development() -> None:
    assert Settings(_env_file=None).registration_mode == "open"  # type: ignore[call-arg]
    production = Settings(_env_file=None, environment="production")  # type: ignore[call-arg]
    assert production.registration_mode == "invite"


async def test_password_length_is_bounded(client: httpx.AsyncClient) -> None:
    for password in ("x" * 11, "x" * 1025):
        response = await client.post(
            REGISTER, json={"email": f"{unique('len')}@example.test", "password": password}
        )
        assert response.status_code == 422, response.text
    ok = await client.post(
        REGISTER, json={"email": f"{unique('len')}@example.test", "password": "x" * 1024}
    )
    assert ok.status_code == 201


async def test_the_stored_hash_is_argon2id_at_least_at_owasp_minimum(
    client: httpx.AsyncClient, database: Database
) -> None:
    created = await client.post(
        REGISTER, json={"email": f"{unique('h')}@example.test", "password": KNOWN_PASSWORD}
    )
    stored = await stored_hash(database, created.json()["id"])
    assert stored.startswith("$argon2id$")
    assert KNOWN_PASSWORD not in stored
    parameters = extract_parameters(stored)
    assert parameters.type is Type.ID
    assert parameters.memory_cost >= 19 * 1024
    assert parameters.time_cost >= 2
    assert parameters.parallelism >= 1


async def test_login_rehashes_when_the_parameters_rise(
    backend_settings: Settings, database: Database, world: World
) -> None:
    org = await world.org(roles=())
    user = await login_account(database, org.tenant_id)
    assert extract_parameters(await stored_hash(database, user)).time_cost == 2
    async with app_client(backend_settings, database, password_hash_time_cost=3) as (_, client):
        assert (await login(client, login_email(org.tenant_id))).status_code == 200
    assert extract_parameters(await stored_hash(database, user)).time_cost == 3


async def test_login_refresh_rotation_and_logout(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=())
    user = await login_account(database, org.tenant_id)
    first = await login(client, login_email(org.tenant_id))
    assert first.status_code == 200, first.text
    tokens = first.json()
    assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert (tokens["token_type"], tokens["expires_in"]) == ("bearer", 15 * 60)
    me = await client.get(ME, headers=bearer(tokens))
    assert me.json()["user"]["id"] == str(user)

    rotated = await client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert (await client.get(ME, headers=bearer(new))).status_code == 200

    logged_out = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": new["refresh_token"]}
    )
    assert logged_out.status_code == 204
    after = await client.post(REFRESH, json={"refresh_token": new["refresh_token"]})
    assert after.status_code == 401


async def test_a_reused_refresh_token_revokes_its_family_and_is_audited(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=())
    user = await login_account(database, org.tenant_id)
    stolen = (await login(client, login_email(org.tenant_id))).json()["refresh_token"]
    other_session = (await login(client, login_email(org.tenant_id))).json()["refresh_token"]
    legitimate = (await client.post(REFRESH, json={"refresh_token": stolen})).json()[
        "refresh_token"
    ]

    request_id = f"reuse-{org.tenant_id}"
    replay = await client.post(
        REFRESH, json={"refresh_token": stolen}, headers={"X-Request-ID": request_id}
    )
    assert replay.status_code == 401
    assert replay.headers["content-type"] == "application/problem+json"
    # The whole family is gone: the token the rightful owner holds no longer works either.
    assert (await client.post(REFRESH, json={"refresh_token": legitimate})).status_code == 401
    # Another session of the same user is another family: untouched.
    assert (await client.post(REFRESH, json={"refresh_token": other_session})).status_code == 200
    (entry,) = await entries(database, request_id)
    assert (entry.action, entry.result, entry.actor_id) == ("auth.refresh", "denied", str(user))
    assert entry.tenant_id == org.tenant_id
    assert entry.details["reuse"] is True


async def test_unknown_email_and_wrong_password_take_one_code_path(
    backend_settings: Settings, database: Database, world: World
) -> None:
    """Structurally, not by the clock: each verifies one argon2id hash with the same
    parameters and gets the same answer."""
    org = await world.org(roles=())
    await login_account(database, org.tenant_id)

    class Recording(Passwords):
        calls: list[str] = []

        async def verify(self, stored_hash: str, password: str) -> bool:
            self.calls.append(stored_hash)
            return await super().verify(stored_hash, password)

    async with app_client(backend_settings, database) as (app, client):
        passwords = Recording(app.state.settings)
        app.state.passwords = passwords
        wrong = await login(client, login_email(org.tenant_id), "a wrong password!")
        wrong_calls = list(passwords.calls)
        passwords.calls.clear()
        unknown = await login(client, f"{unique('nobody')}@example.test", "a wrong password!")
        unknown_calls = list(passwords.calls)
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"]
    assert len(wrong_calls) == len(unknown_calls) == 1
    assert unknown_calls == [passwords.dummy_hash]
    assert extract_parameters(wrong_calls[0]) == extract_parameters(unknown_calls[0])


async def test_a_failed_login_writes_one_denied_entry(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=())
    user = await login_account(database, org.tenant_id)
    request_id = f"bad-login-{org.tenant_id}"
    response = await client.post(
        LOGIN,
        json={"email": login_email(org.tenant_id), "password": "not the password"},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 401
    (entry,) = await entries(database, request_id)
    assert (entry.action, entry.result, entry.actor_id) == ("auth.login", "denied", str(user))
    assert entry.details["status"] == 401
    unknown_id = f"unknown-login-{org.tenant_id}"
    await client.post(
        LOGIN,
        json={"email": f"{unique('nobody')}@example.test", "password": "whatever it is"},
        headers={"X-Request-ID": unknown_id},
    )
    (entry,) = await entries(database, unknown_id)
    assert (entry.action, entry.result, entry.actor_id, entry.tenant_id) == (
        "auth.login",
        "denied",
        None,
        None,
    )


async def test_the_oauth2_password_form_logs_in(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=())
    await login_account(database, org.tenant_id)
    response = await client.post(
        LOGIN,
        data={
            "grant_type": "password",
            "username": login_email(org.tenant_id),
            "password": KNOWN_PASSWORD,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"
    schema = (await client.get("/openapi.json")).json()
    flow = schema["components"]["securitySchemes"]["password"]["flows"]["password"]
    assert flow["tokenUrl"] == LOGIN


async def test_changing_the_password_ends_the_other_sessions(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=())
    await login_account(database, org.tenant_id)
    email = login_email(org.tenant_id)
    mine, other = (await login(client, email)).json(), (await login(client, email)).json()
    wrong = await client.post(
        "/api/v1/auth/password",
        json={"old_password": "not the password", "new_password": OTHER_PASSWORD},
        headers=bearer(mine),
    )
    assert wrong.status_code == 403
    changed = await client.post(
        "/api/v1/auth/password",
        json={"old_password": KNOWN_PASSWORD, "new_password": OTHER_PASSWORD},
        headers=bearer(mine),
    )
    assert changed.status_code == 204, changed.text
    assert (
        await client.post(REFRESH, json={"refresh_token": other["refresh_token"]})
    ).status_code == 401
    assert (
        await client.post(REFRESH, json={"refresh_token": mine["refresh_token"]})
    ).status_code == 200
    assert (await login(client, email)).status_code == 401
    assert (await login(client, email, OTHER_PASSWORD)).status_code == 200


async def test_a_user_made_by_an_admin_sets_a_password_with_a_one_time_token(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(roles=(Role.admin,))
    email = f"{unique('made')}@example.test"
    created = await client.post(
        "/api/users", json={"email": email}, headers=org.headers[Role.admin]
    )
    assert created.status_code == 201, created.text
    token = created.json()["set_password_token"]
    assert "password" not in {
        k for k in created.json() if k != "set_password_token" and k != "set_password_expires_at"
    }
    assert (await login(client, email)).status_code == 401
    done = await client.post(
        "/api/v1/auth/set-password", json={"token": token, "password": KNOWN_PASSWORD}
    )
    assert done.status_code == 204, done.text
    assert (await login(client, email)).status_code == 200
    again = await client.post(
        "/api/v1/auth/set-password", json={"token": token, "password": OTHER_PASSWORD}
    )
    assert again.status_code == 401


async def test_malformed_logins_are_422_or_415_never_500(client: httpx.AsyncClient) -> None:
    nul = {"email": "a\x00@example.test", "password": "x"}
    assert (await client.post(LOGIN, json=nul)).status_code == 422
    form = {"username": "a\x00@example.test", "password": "x"}
    assert (await client.post(LOGIN, data=form)).status_code == 422
    assert (await client.post(LOGIN, data={"username": "a@example.test"})).status_code == 422
    assert (await client.post(LOGIN, json=[1, 2])).status_code == 422
    not_json = await client.post(LOGIN, content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422
    text = await client.post(LOGIN, content=b"hello", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415
    assert (await client.post(LOGIN, json={**nul, "extra": 1, "email": "a@b"})).status_code == 422
