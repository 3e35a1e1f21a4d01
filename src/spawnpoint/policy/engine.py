"""The policy engine contract: one decision per spawn, failing closed when there is none."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from spawnpoint.config import Settings

DEFAULT_POLICY_TIMEOUT = 2.0
UNDEFINED_REASON = "the policy gave no decision (data.spawn.allow is undefined)"
NO_REASON = "the policy denied the spawn without giving a reason"


@dataclass(frozen=True)
class Decision:
    """The engine's answer: `allow` only when the policy allows and nothing denies.

    `reasons` are the policy's `deny` strings, sorted; a refusal always has at least one.
    """

    allow: bool
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def from_documents(cls, allow: object, deny: object) -> Decision:
        """Combine `data.spawn.allow` and `data.spawn.deny` (None: undefined).

        Raises:
            PolicyUnavailable: `allow` is neither a boolean nor undefined, or `deny` is not a
                collection of strings.
        """
        if allow is not None and not isinstance(allow, bool):
            raise PolicyUnavailable(f"data.spawn.allow is {type(allow).__name__}, not a boolean")
        if deny is None:
            deny = []
        if not isinstance(deny, list) or not all(isinstance(r, str) for r in deny):
            raise PolicyUnavailable("data.spawn.deny is not a set of strings")
        reasons = sorted(set(deny))
        if allow is True and not reasons:
            return cls(allow=True, reasons=[])
        if not reasons:
            reasons = [UNDEFINED_REASON if allow is None else NO_REASON]
        return cls(allow=False, reasons=reasons)


class PolicyUnavailable(Exception):
    """The engine could not answer: timeout, connection error, 5xx, malformed answer or a Rego
    runtime error. Callers fail closed: the spawn answers 503."""


class PolicyCompileError(ValueError):
    """A policy module does not parse or compile; the message names the module and line."""


@runtime_checkable
class PolicyEngine(Protocol):
    """Evaluates the spawn policy for one input document."""

    async def evaluate(self, policy_input: dict[str, Any]) -> Decision:
        """Decide one spawn.

        Args:
            policy_input: the input document (`SpawnPolicyInput.document()`).

        Returns:
            The decision; `allow` is False whenever the policy's answer is undefined.

        Raises:
            PolicyUnavailable: no decision could be obtained.
        """
        ...

    async def aclose(self) -> None:
        """Release threads and connections; `evaluate` fails with PolicyUnavailable after."""
        ...


def build_policy_engine(
    settings: Settings,
    *,
    modules: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_POLICY_TIMEOUT,
) -> PolicyEngine:
    """The engine POLICY_ENGINE names: `embedded` (regopy, in process) or `opa` (OPA_URL).

    `modules` are extra Rego modules for the embedded engine (an OPA server loads its own);
    `timeout` is how many seconds a decision may take before PolicyUnavailable.

    Raises:
        PolicyCompileError: the embedded policy does not compile.
    """
    if settings.policy_engine == "opa":
        from spawnpoint.policy.opa import OpaPolicyEngine

        return OpaPolicyEngine(settings.opa_url, settings.opa_policy_path, timeout=timeout)
    from spawnpoint.policy.embedded import EmbeddedPolicyEngine

    return EmbeddedPolicyEngine(modules, timeout=timeout)
