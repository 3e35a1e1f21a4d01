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
