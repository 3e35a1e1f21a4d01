"""Provisioner drivers, chosen by a template's `provisioner` name."""

from __future__ import annotations

BUILTIN_PROVISIONERS = ("dry-run", "local", "orchestrator", "kubernetes")
HOST_COMMAND_PROVISIONERS = frozenset({"local"})
