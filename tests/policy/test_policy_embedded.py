"""The default policy and the embedded (regopy) engine."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import regopy  # type: ignore[import-untyped]
from policy_samples import document

from spawnpoint.policy import Decision, PolicyCompileError, PolicyUnavailable
from spawnpoint.policy._rego import CompiledQuery
from spawnpoint.policy.embedded import DEFAULT_MODULE, EmbeddedPolicyEngine, default_policy
from spawnpoint.policy.engine import UNDEFINED_REASON

RESTRICTED = "template jupyter is restricted to tenant admins"
EXTRA_MODULE = {"extra.rego": "package spawn.extra\n\nx := 1\n"}


@pytest.fixture(scope="module")
def engine() -> EmbeddedPolicyEngine:
    return EmbeddedPolicyEngine()


@pytest.fixture
async def fresh_engine() -> AsyncIterator[Callable[..., EmbeddedPolicyEngine]]:
    """Build engines with extra modules; closes them after the test."""
    built: list[EmbeddedPolicyEngine] = []

    def build(modules: dict[str, str] | None = None) -> EmbeddedPolicyEngine:
        built.append(EmbeddedPolicyEngine(modules))
        return built[-1]

    yield build
    for each in built:
        await each.aclose()


async def test_a_normal_spawn_is_allowed(engine: EmbeddedPolicyEngine) -> None:
    assert await engine.evaluate(document()) == Decision(allow=True, reasons=[])


@pytest.mark.parametrize("role", ["viewer", "member", "publisher"])
async def test_restricted_template_is_denied_below_admin(
    engine: EmbeddedPolicyEngine, role: str
) -> None:
    doc = document(user={"role": role}, template={"spec": {"restricted": True}})
    assert await engine.evaluate(doc) == Decision(allow=False, reasons=[RESTRICTED])


@pytest.mark.parametrize(
    "user", [{"role": "admin"}, {"role": "operator"}, {"role": "member", "operator": True}]
)
async def test_restricted_template_is_allowed_for_admins_and_operators(
    engine: EmbeddedPolicyEngine, user: dict[str, Any]
) -> None:
    doc = document(user=user, template={"spec": {"restricted": True}})
    assert await engine.evaluate(doc) == Decision(allow=True, reasons=[])


async def test_suspended_tenant_is_denied(engine: EmbeddedPolicyEngine) -> None:
    decision = await engine.evaluate(document(tenant={"status": "suspended"}))
    assert decision == Decision(allow=False, reasons=["tenant acme is suspended"])


def budget_in(state: str, spent: float) -> dict[str, Any]:
    """The sample's tenant budget, in `state` with `spent` of its 500."""
    (budget,) = document()["budget"]["budgets"]
    return {"status": state, "budgets": [{**budget, "spent": spent, "state": state}]}


async def test_exceeded_budget_is_denied_and_warning_is_not(engine: EmbeddedPolicyEngine) -> None:
    exceeded = document(budget=budget_in("exceeded", 520.5))
    assert await engine.evaluate(exceeded) == Decision(
        allow=False,
        reasons=[
            "budget 00000000-0000-0000-0000-0000000000b1 (tenant "
            "00000000-0000-0000-0000-000000000001) is exceeded: 520.5 spent of its monthly "
            "limit of 500"
        ],
    )
    warning = document(budget=budget_in("warning", 450))
    assert (await engine.evaluate(warning)).allow


async def test_an_exceeded_status_without_its_budget_is_denied(
    engine: EmbeddedPolicyEngine,
) -> None:
    decision = await engine.evaluate(document(budget={"status": "exceeded", "budgets": []}))
    assert decision == Decision(allow=False, reasons=["the budget is exceeded"])


@pytest.mark.parametrize(
    ("usage", "reason"),
    [
        (
            {"workspaces": 5},
            "quota max_workspaces exceeded: 5 in use + 1 requested > 5 allowed by plan team",
        ),
        ({"cpu": 7}, "quota max_cpu exceeded: 7 in use + 1.5 requested > 8 allowed by plan team"),
        (
            {"memory_mb": 15000},
            "quota max_memory_mb exceeded: 15000 in use + 2048 requested > 16384 allowed by plan "
            "team",
        ),
        (
            {"storage_gb": 95},
            "quota max_storage_gb exceeded: 95 in use + 10 requested > 100 allowed by plan team",
        ),
    ],
)
async def test_each_quota_limit_is_denied_with_its_name(
    engine: EmbeddedPolicyEngine, usage: dict[str, Any], reason: str
) -> None:
    assert await engine.evaluate(document(usage=usage)) == Decision(allow=False, reasons=[reason])


async def test_usage_exactly_at_the_limits_is_allowed(engine: EmbeddedPolicyEngine) -> None:
    full = {"workspaces": 4, "cpu": 6.5, "memory_mb": 14336, "storage_gb": 90}
    assert (await engine.evaluate(document(usage=full))).allow


async def test_every_reason_is_reported(engine: EmbeddedPolicyEngine) -> None:
    doc = document(
        tenant={"status": "suspended"},
        template={"spec": {"restricted": True}},
        budget={"status": "exceeded"},
        usage={"workspaces": 9},
    )
    decision = await engine.evaluate(doc)
    assert not decision.allow
    assert len(decision.reasons) == 4
    assert decision.reasons == sorted(decision.reasons)


async def test_an_incomplete_input_fails_closed(engine: EmbeddedPolicyEngine) -> None:
    doc = document()
    del doc["usage"], doc["tenant"]
    decision = await engine.evaluate(doc)
    assert not decision.allow
    assert "the policy input has no usage section" in decision.reasons
    assert "the policy input has no tenant section" in decision.reasons


@pytest.mark.parametrize("term", [None, "[1, 2]", '"spawn"'])
def test_an_absent_or_non_object_input_fails_closed(term: str | None) -> None:
    # The engines always send an object; an OPA queried without one must still refuse.
    interpreter = regopy.Interpreter()
    interpreter.add_module(DEFAULT_MODULE, default_policy())
    if term is not None:
        interpreter.set_input_term(term)
    output = interpreter.query("x := [data.spawn.allow, data.spawn.deny]")
    assert output.results[0].bindings["x"] == [False, ["the policy input is not an object"]]


@pytest.mark.parametrize(
    "name", ['x"]], "allow": true, "y": ["', "back\\slash", "line\nbreak", "ünïcødé ✓"]
)
async def test_reasons_carry_any_string_verbatim(engine: EmbeddedPolicyEngine, name: str) -> None:
    # rego-cpp's JSON rendering does not escape strings; decisions must not depend on it.
    doc = document(template={"name": name, "spec": {"restricted": True}})
    decision = await engine.evaluate(doc)
    assert decision == Decision(
        allow=False, reasons=[f"template {name} is restricted to tenant admins"]
    )


async def test_an_extra_module_adds_a_deny_rule(
    fresh_engine: Callable[..., EmbeddedPolicyEngine],
) -> None:
    engine = fresh_engine(
        {
            "tenant/gpu.rego": """
package spawn

import rego.v1

deny contains sprintf("template %s needs the gpu-approved parameter", [input.template.name]) if {
	input.template.spec.cpu > 1
	not input.request.parameters["gpu-approved"]
}
"""
        }
    )
    assert await engine.evaluate(document()) == Decision(
        allow=False, reasons=["template jupyter needs the gpu-approved parameter"]
    )
    approved = document(request={"parameters": {"gpu-approved": True}})
    assert (await engine.evaluate(approved)).allow
    assert (await engine.evaluate(document(template={"spec": {"cpu": 1}}))).allow


def test_the_policy_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"Interpreter": 0, "add_module": 0, "build": 0, "query": 0}

    def counting(name: str) -> Callable[..., Any]:
        original = getattr(regopy.Interpreter, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name if name != "__init__" else "Interpreter"] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in ("__init__", "add_module", "build", "query"):
        monkeypatch.setattr(regopy.Interpreter, name, counting(name))
    engine = EmbeddedPolicyEngine(EXTRA_MODULE)
    compiled = dict(calls)
    assert compiled == {"Interpreter": 1, "add_module": 2, "build": 1, "query": 0}

    for i in range(200):
        engine.decide(document(usage={"workspaces": i % 7}))

    assert calls == compiled


async def test_concurrent_tasks_never_mix_inputs(engine: EmbeddedPolicyEngine) -> None:
    async def one(i: int) -> tuple[int, Decision]:
        role = "admin" if i % 3 == 0 else "member"
        doc = document(
            user={"role": role}, template={"name": f"t{i}", "spec": {"restricted": True}}
        )
        return i, await engine.evaluate(doc)

    for i, decision in await asyncio.gather(*(one(i) for i in range(300))):
        if i % 3 == 0:
            assert decision == Decision(allow=True, reasons=[])
        else:
            assert decision.reasons == [f"template t{i} is restricted to tenant admins"]


def test_concurrent_threads_never_mix_inputs(engine: EmbeddedPolicyEngine) -> None:
    start = threading.Barrier(8)

    def worker(offset: int) -> list[tuple[int, Decision]]:
        start.wait()
        out = []
        for i in range(offset, 400, 8):
            doc = document(template={"name": f"t{i}", "spec": {"restricted": i % 2 == 1}})
            out.append((i, engine.decide(doc)))
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [r for chunk in pool.map(worker, range(8)) for r in chunk]
    assert len(results) == 400
    for i, decision in results:
        if i % 2:
            assert decision.reasons == [f"template t{i} is restricted to tenant admins"]
        else:
            assert decision == Decision(allow=True, reasons=[])


async def test_a_rego_runtime_error_is_unavailable(
    fresh_engine: Callable[..., EmbeddedPolicyEngine],
) -> None:
    engine = fresh_engine(
        {
            "conflict.rego": """
package spawn

import rego.v1

tier := "small" if input.template.spec.cpu < 2
tier := "gpu" if input.template.spec.image == "cuda"

deny contains "gpu tier" if tier == "gpu"
"""
        }
    )
    assert (await engine.evaluate(document())).allow
    with pytest.raises(PolicyUnavailable, match="eval_conflict_error"):
        await engine.evaluate(document(template={"spec": {"image": "cuda"}}))


async def test_a_builtin_error_fails_closed(
    fresh_engine: Callable[..., EmbeddedPolicyEngine],
) -> None:
    # Non-strict, to_number("Acme") would be undefined and the deny rule silently skipped.
    rule = 'deny contains "n" if to_number(input.tenant.name) > 0'
    engine = fresh_engine({"n.rego": f"package spawn\n\nimport rego.v1\n\n{rule}\n"})
    with pytest.raises(PolicyUnavailable, match="eval_builtin_error"):
        await engine.evaluate(document())


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('deny contains {"reason": "x"} if true', "deny is not a set of strings"),
        ('allow := "yes"', "eval_conflict_error|not a boolean"),
    ],
)
async def test_a_malformed_answer_is_unavailable(
    fresh_engine: Callable[..., EmbeddedPolicyEngine], source: str, message: str
) -> None:
    engine = fresh_engine({"bad.rego": f"package spawn\n\nimport rego.v1\n\n{source}\n"})
    with pytest.raises(PolicyUnavailable, match=message):
        await engine.evaluate(document())


async def test_an_undefined_decision_is_not_allowed(
    fresh_engine: Callable[..., EmbeddedPolicyEngine],
) -> None:
    # The default policy always defines `allow`, so point the engine at a rule that is not.
    engine = fresh_engine()
    engine._query = CompiledQuery(engine.modules, "[data.spawn.no_such_rule, data.spawn.deny]")
    decision = await engine.evaluate(document())
    assert decision == Decision(allow=False, reasons=[UNDEFINED_REASON])


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        (
            {"broken.rego": "package spawn\n\nimport rego.v1\n\ndeny contains if {\n"},
            "broken.rego:5",
        ),
        ({"f.rego": 'package spawn\n\nimport rego.v1\n\ndeny contains "x" if nope(1)\n'}, "nope"),
        ({DEFAULT_MODULE: "package spawn\n"}, "default policy"),
        ({"set.rego": "package spawn\n\ndeny := set()\n"}, "Invalid rule body for set rule"),
    ],
)
def test_a_module_that_does_not_compile_is_invalid(modules: dict[str, str], message: str) -> None:
    with pytest.raises(PolicyCompileError, match=message):
        EmbeddedPolicyEngine(modules)


def test_an_input_that_is_not_json_is_refused(engine: EmbeddedPolicyEngine) -> None:
    with pytest.raises(TypeError, match="JSON types"):
        engine.decide({**document(), "request": {"tags": {"a", "b"}}})
    with pytest.raises(ValueError, match="64 bits"):
        engine.decide({**document(), "request": {"n": 2**70}})


async def test_the_default_policy_alone_is_decided_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, int] = {}
    for name, engine in (
        ("default", EmbeddedPolicyEngine()),
        ("extended", EmbeddedPolicyEngine(EXTRA_MODULE)),
    ):
        decide = engine.decide

        def recording(policy_input: dict[str, Any], name: str = name, decide: Any = decide) -> Any:
            seen[name] = threading.get_ident()
            return decide(policy_input)

        monkeypatch.setattr(engine, "decide", recording)
        try:
            assert (await engine.evaluate(document())).allow is True
        finally:
            await engine.aclose()
    assert seen["default"] == loop_thread
    # Extra modules have no bounded cost: they run on the engine's thread, under the timeout.
    assert seen["extended"] != loop_thread


async def test_a_policy_that_runs_too_long_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # rego-cpp cannot be interrupted, so stand in for a runaway module with a decide() that
    # blocks until released; the caller must get its answer when the timeout expires.
    engine = EmbeddedPolicyEngine(EXTRA_MODULE, timeout=0.2)
    release = threading.Event()

    def stuck(_policy_input: dict[str, Any]) -> Decision:
        release.wait(10)
        return Decision(allow=True)

    monkeypatch.setattr(engine, "decide", stuck)
    started = time.monotonic()
    try:
        with pytest.raises(PolicyUnavailable, match=r"within 0\.2 s"):
            await engine.evaluate(document())
        assert time.monotonic() - started < 2
    finally:
        release.set()
        await engine.aclose()


async def test_a_closed_engine_is_unavailable() -> None:
    engine = EmbeddedPolicyEngine()
    await engine.aclose()
    with pytest.raises(PolicyUnavailable, match="closed"):
        await engine.evaluate(document())
    await engine.aclose()
