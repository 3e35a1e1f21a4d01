"""Rego evaluated in process by rego-cpp (regopy): no sidecar, no network hop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from typing import Any, Final

from spawnpoint.policy._rego import (
    CompiledQuery,
    RegoCompileError,
    RegoRuntimeError,
    RegoUndefined,
)
from spawnpoint.policy.engine import (
    DEFAULT_POLICY_TIMEOUT,
    Decision,
    PolicyCompileError,
    PolicyUnavailable,
)

DEFAULT_MODULE: Final = "spawnpoint/policy/default.rego"
# Both documents in one query: `allow` reads `deny`, which rego-cpp then evaluates once.
DECISION_QUERY: Final = "[data.spawn.allow, data.spawn.deny]"


def default_policy() -> str:
    """The source of the default policy shipped in the package."""
    return files("spawnpoint.policy").joinpath("default.rego").read_text(encoding="utf-8")


class EmbeddedPolicyEngine:
    """The default policy plus `modules`, compiled once at construction and reused.

    Evaluations are serialized on one interpreter (see `CompiledQuery`). The default policy
    alone is evaluated inline, on the event loop: its rules are bounded by the input's size and
    a decision takes a few hundred microseconds, less than handing it to a thread and back,
    which a spawn would pay while it holds its tenant's lock. With extra `modules`, whose cost
    nobody has bounded, evaluations run on a dedicated worker thread (rego-cpp releases the
    GIL, so the event loop keeps serving); rego-cpp cannot interrupt a query, so `timeout`
    bounds how long a caller waits, and a runaway module makes spawns fail closed instead of
    hanging.
    """

    def __init__(
        self,
        modules: Mapping[str, str] | None = None,
        *,
        timeout: float = DEFAULT_POLICY_TIMEOUT,
    ) -> None:
        """Compile the policy.

        Args:
            modules: extra Rego modules by name (a name is shown in compile errors).
            timeout: seconds `evaluate` waits for a decision (queueing included).

        Raises:
            PolicyCompileError: a module does not parse or compile, or reuses the default's name.
        """
        if timeout <= 0:
            raise ValueError("the policy timeout must be positive")
        self.timeout = timeout
        extra = dict(modules or {})
        if DEFAULT_MODULE in extra:
            raise PolicyCompileError(f"{DEFAULT_MODULE} is the default policy's module name")
        self.modules: dict[str, str] = {DEFAULT_MODULE: default_policy(), **extra}
        self.inline = not extra
        try:
            self._query = CompiledQuery(self.modules, DECISION_QUERY)
            # rego-cpp reports some compile errors (an unknown function) only when a query
            # runs; an empty input flushes them out now rather than on the first spawn.
            self._query.evaluate({})
        except RegoCompileError as exc:
            raise PolicyCompileError(str(exc)) from None
        except RegoRuntimeError as exc:
            if "wellformed_error" in str(exc):
                raise PolicyCompileError(str(exc)) from None
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="spawnpoint-policy"
        )

    def decide(self, policy_input: Mapping[str, Any]) -> Decision:
        """Evaluate synchronously, on the calling thread (thread-safe; blocks for the run).

        Raises:
            PolicyUnavailable: a Rego runtime error or a malformed answer.
            TypeError, ValueError: `policy_input` is not a JSON document.
        """
        try:
            answer = self._query.evaluate(policy_input)
        except RegoUndefined:
            return Decision.from_documents(None, None)
        except RegoRuntimeError as exc:
            raise PolicyUnavailable(f"the policy failed: {exc}") from None
        if not isinstance(answer, list) or len(answer) != 2:
            raise PolicyUnavailable(f"the policy answered {answer!r}, not [allow, deny]")
        return Decision.from_documents(answer[0], answer[1])

    async def evaluate(self, policy_input: dict[str, Any]) -> Decision:
        """Decide one spawn, inline or on the engine's thread (see `PolicyEngine.evaluate`)."""
        executor = self._executor
        if executor is None:
            raise PolicyUnavailable("the policy engine is closed")
        if self.inline:
            return self.decide(policy_input)
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(executor, self.decide, policy_input)
        except RuntimeError:  # shut down by a concurrent aclose()
            raise PolicyUnavailable("the policy engine is closed") from None
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            raise PolicyUnavailable(
                f"the policy did not decide within {self.timeout:g} s"
            ) from None

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
