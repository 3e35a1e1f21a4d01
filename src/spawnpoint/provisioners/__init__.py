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

__all__ = [
    "ENTRY_POINT_GROUP",
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
