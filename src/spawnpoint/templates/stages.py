"""The spec a driver gets for a workspace in a stage: the template's, with that stage's
overrides applied (`TemplateSpec.stages`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def stage_spec(spec: Mapping[str, Any], stage: str | None) -> dict[str, Any]:
    """`spec` as it applies in `stage`.

    Without a stage the spec is returned as stored. In a stage, the result names it
    (`stage`), carries the stage's `egress` rules when it defines them (the network policy
    a driver applies) and its `storage_gb`, and merges its `env` over the template's; the
    `stages` table itself is left out, since a driver acts on one stage. A stage the
    template does not define runs the template as it is.
    """
    if stage is None:
        return dict(spec)
    effective = {key: value for key, value in spec.items() if key != "stages"}
    effective["stage"] = stage
    override: Mapping[str, Any] = (spec.get("stages") or {}).get(stage) or {}
    if override.get("egress") is not None:
        # A rule stored without ports allows every port.
        effective["egress"] = [{"ports": [], **rule} for rule in override["egress"]]
    if override.get("storage_gb") is not None:
        effective["storage_gb"] = override["storage_gb"]
    if override.get("env"):
        effective["env"] = {**(spec.get("env") or {}), **override["env"]}
    return effective


def defines_stage(spec: Mapping[str, Any], stage: str) -> bool:
    """Whether `stage` may be used with `spec`: a template without stages takes any."""
    stages = spec.get("stages") or {}
    return not stages or stage in stages


def stage_storage_gb(spec: Mapping[str, Any], stage: str | None) -> int:
    """The storage a workspace of `spec` holds in `stage`."""
    return int(stage_spec(spec, stage).get("storage_gb", 1))
