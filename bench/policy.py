"""Policy decision latency: the embedded engine (regopy) and the OPA REST path.

    .venv/bin/python bench/policy.py [--evaluations 5000] [--goal-us 100]

What it does, all on 127.0.0.1, in about a minute:

1. builds 64 distinct spawn inputs (allowed and denied ones) with the real builders;
2. times, one decision at a time, for `--evaluations` decisions each (500 for the slow
   regopy public-API comparison rows):
   - the floor: a one-rule Rego policy through the same embedded path (input marshalling plus
     one compiled-query run) -- the baseline of the ratio column;
   - the embedded engine's `decide()` and `await evaluate()` (what the spawn service sees:
     inline on the event loop with the default policy alone), and `await evaluate()` of an
     engine with one extra (trivial) module, which runs on the engine's worker thread;
   - `OpaPolicyEngine.evaluate()` against tests/policy/opa_server.py, a Data API server running
     the same default policy in a separate process (two concurrent POSTs per decision);
   - for the breakdown: building the document with pydantic, and marshalling it into rego-cpp;
3. prints a Markdown table (p50, p99, mean in microseconds) and writes it to
   bench/results/policy.md.

Exit status: 0 when the embedded `evaluate()` p50 meets --goal-us, 1 when it does not.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "policy"))

import regopy  # type: ignore[import-untyped]
from policy_samples import document, sample_input

from _common import (
    REPO,
    clean_env,
    free_port,
    markdown_table,
    percentile,
    raise_on_sigterm,
    server_process,
    write_result,
)
from spawnpoint.policy import _rego
from spawnpoint.policy._rego import CompiledQuery
from spawnpoint.policy.embedded import DECISION_QUERY, EmbeddedPolicyEngine
from spawnpoint.policy.opa import OpaPolicyEngine

EVALUATE = "embedded await evaluate() (default policy: inline)"
FLOOR_POLICY = """
package spawn

import rego.v1

default allow := false

allow if input.action == "spawn"

deny := set()
"""


def inputs() -> list[dict[str, Any]]:
    """64 documents: mostly allowed, some denied for each reason, all different."""
    docs = []
    for i in range(64):
        doc = document(
            request={"name": f"ws-{i}"},
            usage={"workspaces": i % 6, "cpu": float(i % 8), "memory_mb": 1024 * (i % 12)},
        )
        if i % 16 == 5:
            doc["template"]["spec"]["restricted"] = True
        if i % 16 == 9:
            doc["tenant"]["status"] = "suspended"
        if i % 16 == 13:
            doc["budget"]["status"] = "exceeded"
        docs.append(doc)
    return docs


def time_sync(
    fn: Callable[[dict[str, Any]], object], docs: Sequence[dict[str, Any]], n: int
) -> list[float]:
    for doc in docs:
        fn(doc)
    samples = []
    gc.disable()
    try:
        for i in range(n):
            doc = docs[i % len(docs)]
            started = time.perf_counter_ns()
            fn(doc)
            samples.append((time.perf_counter_ns() - started) / 1000)
    finally:
        gc.enable()
    return samples


async def time_async(
    fn: Callable[[dict[str, Any]], Awaitable[object]], docs: Sequence[dict[str, Any]], n: int
) -> list[float]:
    for doc in docs:
        await fn(doc)
    samples = []
    for i in range(n):
        doc = docs[i % len(docs)]
        started = time.perf_counter_ns()
        await fn(doc)
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def marshal_only(doc: dict[str, Any]) -> None:
    handle = _rego._new_input()
    try:
        _rego._marshal(handle, doc)
    finally:
        _rego._free_input(handle)


def public_api_paths(modules: dict[str, str]) -> dict[str, Callable[[dict[str, Any]], object]]:
    """The same decision through regopy's public API, for comparison (not used by spawnpoint:
    its `Output` parses rego-cpp's unescaped JSON, see spawnpoint.policy._rego)."""
    per_query = regopy.Interpreter()
    built = regopy.Interpreter()
    for name, source in modules.items():
        per_query.add_module(name, source)
        built.add_module(name, source)
    bundle = built.build(DECISION_QUERY)

    def query_each_time(doc: dict[str, Any]) -> object:
        per_query.set_input(doc)
        return per_query.query(DECISION_QUERY).results

    def query_bundle(doc: dict[str, Any]) -> object:
        built.set_input(doc)
        return built.query_bundle(bundle).results

    return {
        "  regopy public API: set_input + query() (compiles per call)": query_each_time,
        "  regopy public API: set_input + query_bundle()": query_bundle,
    }


async def measure(n: int) -> dict[str, list[float]]:
    docs = inputs()
    floor = CompiledQuery({"floor.rego": FLOOR_POLICY}, DECISION_QUERY)
    engine = EmbeddedPolicyEngine()
    extended = EmbeddedPolicyEngine({"extra.rego": "package spawn.extra\n\nx := 1\n"})
    results: dict[str, list[float]] = {}
    try:
        results["floor: one-rule policy, same path"] = time_sync(floor.evaluate, docs, n)
        results["embedded decide() (calling thread)"] = time_sync(engine.decide, docs, n)
        results[EVALUATE] = await time_async(engine.evaluate, docs, n)
        results["embedded await evaluate(), one extra module (worker thread)"] = await time_async(
            extended.evaluate, docs, n
        )
        results["  part: marshal the input into rego-cpp"] = time_sync(marshal_only, docs, n)
        public = public_api_paths(engine.modules)
        for name, fn in public.items():
            results[name] = time_sync(fn, docs, min(n, 500))
        spawn_input = sample_input()
        results["  part: SpawnPolicyInput.document() (pydantic)"] = time_sync(
            lambda _doc: spawn_input.document(), docs, n
        )
    finally:
        await engine.aclose()
        await extended.aclose()

    port = free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        server_process(
            "opa_server",
            [sys.executable, str(REPO / "tests" / "policy" / "opa_server.py"), "--port", str(port)],
            env=clean_env(),
            port=port,
            cwd=Path(tmp),
            ready_path="/health",
        ) as server,
    ):
        opa = OpaPolicyEngine(server.base_url, "/v1/data/spawn/allow", timeout=2)
        try:
            expected = [EmbeddedPolicyEngine().decide(doc) for doc in docs[:16]]
            assert [await opa.evaluate(doc) for doc in docs[:16]] == expected
            results["OPA REST (separate process, 2 POSTs)"] = await time_async(
                opa.evaluate, docs, n
            )
        finally:
            await opa.aclose()
    return results


def report(results: dict[str, list[float]], n: int) -> str:
    baseline = statistics.median(results["floor: one-rule policy, same path"])
    rows = []
    for name, samples in results.items():
        p50 = percentile(samples, 50)
        rows.append(
            [
                name,
                len(samples),
                f"{p50:.0f}",
                f"{percentile(samples, 99):.0f}",
                f"{statistics.fmean(samples):.0f}",
                f"{p50 / baseline:.2f}x",
            ]
        )
    table = markdown_table(
        ["path", "decisions", "p50 µs", "p99 µs", "mean µs", "p50 / floor"], rows
    )
    header = (
        f"regopy {regopy.__version__} (rego-cpp {regopy.rego_version()}), Python "
        f"{platform.python_version()}, {platform.machine()}, {n} decisions per row, "
        "64 distinct inputs in rotation"
    )
    return f"{header}\n\n{table}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=5000)
    parser.add_argument("--goal-us", type=float, default=100.0)
    args = parser.parse_args()
    raise_on_sigterm()
    results = asyncio.run(measure(args.evaluations))
    text = report(results, args.evaluations)
    print(text)
    path = write_result("policy.md", text)
    p50 = percentile(results[EVALUATE], 50)
    met = p50 <= args.goal_us
    print(
        f"embedded evaluate() p50 {p50:.0f} µs; goal {args.goal_us:.0f} µs: "
        f"{'met' if met else 'NOT met'} ({path})"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
