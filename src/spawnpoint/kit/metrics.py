"""Prometheus metrics shared by the API and worker processes.

Defined once, at import, in the default registry, which `GET /metrics` exposes (in the
API process, and so for the in-process worker of `spawnpoint serve`).
"""

from __future__ import annotations

from prometheus_client import Counter

SWEEP_ROW_ERRORS = Counter(
    "spawnpoint_sweep_row_errors",
    "Rows a periodic sweep could not process: logged, skipped, and tried again next tick.",
    ["task"],
)

UNAUTHENTICATED_WRITES = Counter(
    "spawnpoint_unauthenticated_writes",
    "Mutating API requests refused before the caller was known (no tenant chain to log to).",
)
