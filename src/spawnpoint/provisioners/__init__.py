"""Provisioner drivers, chosen by a template's `provisioner` name.

The contract lives in `base`; drivers are found through the `spawnpoint.provisioners`
entry-point group by `ProvisionerRegistry.from_entry_points()`.
"""

from __future__ import annotations

from spawnpoint.provisioners.base import (
    ENTRY_POINT_GROUP,
    AnyProvisioner,
    LogSink,
    PermanentProvisionerError,
    ProvisionContext,
    Provisioner,
    ProvisionerConfig,
    ProvisionerDefinitionError,
    ProvisionerError,
    ProvisionerRegistry,
    ProvisionResult,
    UnknownProvisionerError,
    WorkspaceRef,
    WorkspaceStatus,
)

# Static names for template validation until it asks a registry (`registry.names()`,
# `registry.get(name).runs_host_commands`). `kubernetes` is planned but not registered yet.
BUILTIN_PROVISIONERS = ("dry-run", "local", "orchestrator", "kubernetes")
HOST_COMMAND_PROVISIONERS = frozenset({"local"})

__all__ = [
    "BUILTIN_PROVISIONERS",
    "ENTRY_POINT_GROUP",
    "HOST_COMMAND_PROVISIONERS",
    "AnyProvisioner",
    "LogSink",
    "PermanentProvisionerError",
    "ProvisionContext",
    "ProvisionResult",
    "Provisioner",
    "ProvisionerConfig",
    "ProvisionerDefinitionError",
    "ProvisionerError",
    "ProvisionerRegistry",
    "UnknownProvisionerError",
    "WorkspaceRef",
    "WorkspaceStatus",
]
