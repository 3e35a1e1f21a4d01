"""The OPA engine against a real HTTP server speaking OPA's Data API."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from opa_server import LOCALHOST, FakeOpa
from policy_samples import document

from spawnpoint.config import Settings
from spawnpoint.policy import Decision, PolicyUnavailable, build_policy_engine
from spawnpoint.policy.embedded import EmbeddedPolicyEngine
from spawnpoint.policy.engine import NO_REASON, UNDEFINED_REASON
from spawnpoint.policy.opa import OpaPolicyEngine

CUSTOM = """
package custom

import rego.v1

# An allow rule that ignores deny: the engine must still refuse.
allow := true

deny contains "custom says no" if input.request.name == "forbidden"
"""


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpa]:
    with FakeOpa({"custom.rego": CUSTOM, "quiet.rego": "package quiet\n\nallow := false\n"}) as opa:
        yield opa


@pytest.fixture
def opa(server: FakeOpa) -> FakeOpa:
    server.mode = "ok"
    server.requests.clear()
    return server


@pytest.fixture
async def engine(opa: FakeOpa) -> AsyncIterator[OpaPolicyEngine]:
    engine = OpaPolicyEngine(opa.url, "/v1/data/spawn/allow", timeout=2)
    yield engine
    await engine.aclose()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
    return port


async def test_allowed_through_the_data_api(opa: FakeOpa, engine: OpaPolicyEngine) -> None:
    doc = document()
    assert await engine.evaluate(doc) == Decision(allow=True, reasons=[])
    assert sorted(r.path for r in opa.requests) == ["spawn/allow", "spawn/deny"]
    assert all(r.input == doc for r in opa.requests)


async def test_denied_with_reasons_through_the_data_api(engine: OpaPolicyEngine) -> None:
    doc = document(tenant={"status": "suspended"}, template={"spec": {"restricted": True}})
    assert await engine.evaluate(doc) == Decision(
        allow=False,
        reasons=["template jupyter is restricted to tenant admins", "tenant acme is suspended"],
    )


async def test_opa_and_embedded_agree() -> None:
    docs = [
        document(),
        document(user={"role": "viewer"}, template={"spec": {"restricted": True}}),
        document(usage={"cpu": 7.5, "workspaces": 5}),
        document(budget={"status": "exceeded"}),
    ]
    embedded = EmbeddedPolicyEngine()
    with FakeOpa() as opa:
        remote = OpaPolicyEngine(opa.url)
        try:
            for doc in docs:
                assert await remote.evaluate(doc) == await embedded.evaluate(doc)
        finally:
            await remote.aclose()
            await embedded.aclose()


async def test_allow_needs_an_empty_deny_too(opa: FakeOpa) -> None:
    engine = OpaPolicyEngine(opa.url, "/v1/data/custom/allow")
    try:
        assert (await engine.evaluate(document())).allow
        refused = await engine.evaluate(document(request={"name": "forbidden"}))
        assert refused == Decision(allow=False, reasons=["custom says no"])
    finally:
        await engine.aclose()
    assert {r.path for r in opa.requests} == {"custom/allow", "custom/deny"}


async def test_a_refusal_always_has_a_reason(opa: FakeOpa) -> None:
    quiet = OpaPolicyEngine(opa.url, "/v1/data/quiet/allow")
    missing = OpaPolicyEngine(opa.url, "/v1/data/spawn/no_such_rule")
    try:
        assert await quiet.evaluate(document()) == Decision(allow=False, reasons=[NO_REASON])
        assert await missing.evaluate(document()) == Decision(
            allow=False, reasons=[UNDEFINED_REASON]
        )
    finally:
        await quiet.aclose()
        await missing.aclose()


async def test_an_undefined_result_is_not_allowed(opa: FakeOpa, engine: OpaPolicyEngine) -> None:
    opa.mode = "undefined"
    assert await engine.evaluate(document()) == Decision(allow=False, reasons=[UNDEFINED_REASON])


async def test_unreachable_opa_is_unavailable_quickly() -> None:
    engine = OpaPolicyEngine(f"http://{LOCALHOST}:{closed_port()}", timeout=2)
    started = time.monotonic()
    try:
        with pytest.raises(PolicyUnavailable, match="unreachable"):
            await engine.evaluate(document())
    finally:
        await engine.aclose()
    assert time.monotonic() - started < 1


async def test_slow_opa_is_unavailable_after_the_timeout(opa: FakeOpa) -> None:
    opa.mode = "slow"
    engine = OpaPolicyEngine(opa.url, timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(PolicyUnavailable, match=r"within 0\.3 s"):
            await engine.evaluate(document())
    finally:
        await engine.aclose()
    assert 0.25 < time.monotonic() - started < 2


async def test_a_server_error_is_unavailable(opa: FakeOpa, engine: OpaPolicyEngine) -> None:
    opa.mode = "error"
    with pytest.raises(PolicyUnavailable, match="500"):
        await engine.evaluate(document())


async def test_a_malformed_answer_is_unavailable(opa: FakeOpa, engine: OpaPolicyEngine) -> None:
    opa.mode = "malformed"
    with pytest.raises(PolicyUnavailable, match="malformed JSON"):
        await engine.evaluate(document())


async def test_a_non_boolean_allow_is_unavailable(opa: FakeOpa) -> None:
    # Pointing OPA_POLICY_PATH at the package returns an object, not a boolean.
    engine = OpaPolicyEngine(opa.url, "/v1/data/spawn")
    try:
        with pytest.raises(PolicyUnavailable, match="not a boolean"):
            await engine.evaluate(document())
    finally:
        await engine.aclose()


async def test_a_closed_engine_is_unavailable(opa: FakeOpa) -> None:
    engine = OpaPolicyEngine(opa.url)
    await engine.aclose()
    with pytest.raises(PolicyUnavailable, match="closed"):
        await engine.evaluate(document())


@pytest.mark.parametrize("path", ["/v1/data", "/v1/policies/spawn", "spawn/allow"])
def test_the_policy_path_must_be_a_data_api_document(path: str) -> None:
    with pytest.raises(ValueError, match="OPA_POLICY_PATH"):
        OpaPolicyEngine("http://opa:8181", path)


def test_the_deny_document_is_the_sibling_of_the_allow_document() -> None:
    engine = OpaPolicyEngine("http://opa:8181/", "v1/data/acme/spawn/allowed/")
    assert engine.allow_url == "http://opa:8181/v1/data/acme/spawn/allowed"
    assert engine.deny_url == "http://opa:8181/v1/data/acme/spawn/deny"


async def test_settings_choose_the_engine(opa: FakeOpa) -> None:
    remote = build_policy_engine(
        Settings(policy_engine="opa", opa_url=opa.url, opa_policy_path="/v1/data/spawn/allow"),
        timeout=1.5,
    )
    local = build_policy_engine(Settings(policy_engine="embedded"), timeout=0.5)
    try:
        assert isinstance(remote, OpaPolicyEngine)
        assert remote.timeout == 1.5
        assert isinstance(local, EmbeddedPolicyEngine)
        assert local.timeout == 0.5
        assert await remote.evaluate(document()) == await local.evaluate(document())
    finally:
        await remote.aclose()
        await local.aclose()
