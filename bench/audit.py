"""What the audit log and the outbox cost, measured against the same code without them.

    .venv/bin/python bench/audit.py [--pairs 2] [--spawn-rounds 1] [--spawn-seconds 8]
                                    [--writers 32] [--appends 150]
                                    [--verify-entries 1000000] [--no-verify]

Three measurements, each a ratio against a baseline taken in the same run, on PostgreSQL:

1. **Spawns with audit and outbox on vs off.** bench/spawn.py in `--pairs` pairs of runs
   (closed loop + paced at 100/s, `--spawn-rounds` rounds each), the order alternating:
   with `bench/_no_audit.py` as the `spawnpoint` command (the same code, its unit of work
   dropping every audit entry and outbox event), and with the real one. Each side's best
   run (other load on a shared machine only ever slows a run) gives the ratio; every run's
   rate and the CPU per spawn are reported too. Goal: audit + outbox cost at most 15 % of
   the spawn throughput, and the paced p99 stays under 250 ms.
2. **Appends with 32 concurrent writers in one tenant.** `--writers` tasks, each committing
   `--appends` units of work that record one audit entry on the same chain (so every one of
   them waits for the chain head), against the same tasks committing units of work that
   write one outbox row instead (an insert of the same size, no chain). Afterwards the chain
   is verified: valid, gapless, every entry there.
3. **Verification speed** over a `--verify-entries` chain: bench/audit_verify.py (its own
   table, included here).

Prints a Markdown table and writes it to bench/results/audit.md. Exit status 0 when the
goals are met (spawn cost <= 15 %, paced p99 < 250 ms, a valid chain), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import LOCALHOST, markdown_table, scratch_database, venv_command, write_result
from spawnpoint.audit.chain import chain_of
from spawnpoint.audit.keys import SigningKey
from spawnpoint.audit.service import verify_chain
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.events.outbox import outbox_event
from spawnpoint.kit.auditing import system_action
from spawnpoint.migrations import upgrade

BENCH = Path(__file__).resolve().parent
GOAL_COST = 0.15
GOAL_P99_MS = 250.0


def spawn_run(
    label: str, spawnpoint: list[str] | None, rounds: int, seconds: float
) -> dict[str, Any]:
    """bench/spawn.py once; its medians."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [
            sys.executable,
            str(BENCH / "spawn.py"),
            "--rounds",
            str(rounds),
            "--seconds",
            str(seconds),
            "--warmup",
            "2",
            "--baseline-seconds",
            "0",
            "--json",
            out.name,
            "--result-name",
            f"audit-spawn-{label}.md",
        ]
        if spawnpoint is not None:
            argv += ["--spawnpoint", " ".join(spawnpoint)]
        print(f"spawn.py, audit and outbox {label}", flush=True)
        subprocess.run(argv, check=False, timeout=240)
        text = Path(out.name).read_text()
    if not text:
        raise RuntimeError(f"bench/spawn.py ({label}) wrote no results")
    result: dict[str, Any] = json.loads(text)
    return result


async def _writers(
    database: Database, tenant: uuid.UUID, writers: int, each: int, audit: bool
) -> float:
    async def writer(n: int) -> None:
        for i in range(each):
            async with database.unit_of_work(write=True) as uow:
                if audit:
                    uow.record(
                        system_action(
                            tenant_id=tenant,
                            action="bench.append",
                            resource_type="bench",
                            resource_id=f"{n}-{i}",
                            reason="bench",
                        )
                    )
                else:
                    uow.emit(
                        outbox_event(
                            tenant_id=tenant,
                            type="bench.append",
                            key=f"{n}-{i}",
                            payload={"reason": "bench"},
                        )
                    )

    started = time.perf_counter()
    await asyncio.gather(*(writer(n) for n in range(writers)))
    return writers * each / (time.perf_counter() - started)


async def appends(url: str, data_dir: Path, writers: int, each: int) -> dict[str, Any]:
    settings = Settings(_env_file=None, database_url=url, data_dir=data_dir)  # type: ignore[call-arg]
    await asyncio.to_thread(upgrade, settings)
    database = Database(settings.sqlalchemy_url, pool_size=writers)
    tenant = uuid.uuid4()
    try:
        # A short warm-up, then the baseline and the chained appends, twice, interleaved.
        await _writers(database, tenant, writers, 5, audit=False)
        plain, chained = [], []
        for _ in range(2):
            plain.append(await _writers(database, tenant, writers, each, audit=False))
            chained.append(await _writers(database, uuid.uuid4(), writers, each, audit=True))
        await _writers(database, tenant, writers, each, audit=True)
        result = await verify_chain(database, SigningKey.from_settings(settings), chain_of(tenant))
    finally:
        await database.dispose()
    return {
        "plain": max(plain),
        "chained": max(chained),
        "valid": result.valid,
        "checked": result.checked,
        "expected": writers * each,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2, help="off/on pairs of spawn runs")
    parser.add_argument("--spawn-rounds", type=int, default=1, help="rounds per spawn run")
    parser.add_argument("--spawn-seconds", type=float, default=8)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--appends", type=int, default=150, help="units of work per writer")
    parser.add_argument("--verify-entries", type=int, default=1_000_000)
    parser.add_argument("--no-verify", action="store_true", help="skip bench/audit_verify.py")
    args = parser.parse_args()

    # Pairs of runs, the order alternating (off, on), (on, off), ...: other load on a shared
    # machine slows whichever runs beside it, so each side takes its best run.
    no_audit = [*venv_command("python"), str(BENCH / "_no_audit.py")]
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for pair in range(args.pairs):
        for label in ("off", "on") if pair % 2 == 0 else ("on", "off"):
            command = no_audit if label == "off" else None
            runs[label].append(spawn_run(label, command, args.spawn_rounds, args.spawn_seconds))
    off, on = (max(runs[label], key=lambda r: r["rps"]) for label in ("off", "on"))
    with scratch_database("spawnpoint_bench_audit") as db, tempfile.TemporaryDirectory() as tmp:
        append = asyncio.run(appends(db.sqlalchemy_url, Path(tmp), args.writers, args.appends))
    verify_table = ""
    if not args.no_verify:
        completed = subprocess.run(
            [sys.executable, str(BENCH / "audit_verify.py"), "--entries", str(args.verify_entries)],
            check=False,
            capture_output=True,
            text=True,
            timeout=900,
        )
        verify_table = (
            (BENCH / "results" / "audit_verify.md").read_text()
            if completed.returncode in (0, 1)
            else completed.stderr[-2000:]
        )

    cost = 1 - on["rps"] / off["rps"]
    rows = [
        [
            "spawns/s, closed loop (32 clients)",
            f"{off['rps']:.0f}",
            f"{on['rps']:.0f}",
            f"{on['rps'] / off['rps']:.2f}",
        ],
        [
            "CPU ms per spawn (API, workers, their database backends)",
            f"{off['cpu_ms']:.1f}",
            f"{on['cpu_ms']:.1f}",
            f"{on['cpu_ms'] / off['cpu_ms']:.2f}",
        ],
        [
            "every run's spawns/s (in the order run)",
            " ".join(f"{r['rps']:.0f}" for r in runs["off"]),
            " ".join(f"{r['rps']:.0f}" for r in runs["on"]),
            "",
        ],
        [
            "API p50 / p99 ms, closed loop",
            f"{off['api_p50']:.1f} / {off['api_p99']:.1f}",
            f"{on['api_p50']:.1f} / {on['api_p99']:.1f}",
            "",
        ],
        [
            "paced 100/s: request → running p50 / p99 ms",
            f"{off['paced_r2r_p50']:.1f} / {off['paced_r2r_p99']:.1f}",
            f"{on['paced_r2r_p50']:.1f} / {on['paced_r2r_p99']:.1f}",
            f"{on['paced_r2r_p99'] / off['paced_r2r_p99']:.2f}",
        ],
        [
            f"commits/s, {args.writers} writers in one tenant",
            f"{append['plain']:.0f} (outbox row)",
            f"{append['chained']:.0f} (audit entry)",
            f"{append['chained'] / append['plain']:.2f}",
        ],
    ]
    ok = (
        cost <= GOAL_COST
        and on["paced_r2r_p99"] < GOAL_P99_MS
        and append["valid"]
        and append["checked"] == append["expected"]
    )
    report = "\n".join(
        [
            f"## audit and outbox: cost against the same code without them ({LOCALHOST}, "
            "PostgreSQL)",
            "",
            markdown_table(["measure", "without (baseline)", "with audit + outbox", "ratio"], rows),
            "",
            f"Spawn throughput cost: {cost:.1%} (goal ≤ {GOAL_COST:.0%}). Chain after the "
            f"concurrent appends: {'valid' if append['valid'] else 'INVALID'}, "
            f"{append['checked']} of {append['expected']} entries checked. "
            f"Goals {'met' if ok else 'NOT met'}.",
            "",
            verify_table,
        ]
    )
    path = write_result("audit.md", report)
    print(report)
    print(f"written to {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
