"""Read-path benchmark: spawnpoint's GET /api/templates against a bare FastAPI baseline.

    .venv/bin/python bench/api_read.py [--rounds 3] [--seconds 10] [--warmup 2] [--connections 32]

What it does, all on 127.0.0.1 and in well under 3 minutes with the defaults:

1. creates a scratch PostgreSQL database (SPAWNPOINT_BENCH_PG_URL, else SPAWNPOINT_TEST_PG_URL,
   else postgresql://postgres@127.0.0.1:5432/postgres names the server) and runs
   `spawnpoint migrate` on it;
2. seeds 200 templates in the demo tenant, a few platform templates and a few thousand
   templates in other tenants (ids interleaved, so the tenant filter has to do real work), each
   with 1-3 versions;
3. starts `spawnpoint serve` (ENVIRONMENT=development) and bench/baseline_app.py, each one
   uvicorn process with uvloop + httptools, log level warning, the same pool size. spawnpoint
   is called with an API key made by `spawnpoint api-key create --user admin@demo.local`
   (`--auth jwt`: a real JWT from `spawnpoint token create`), so every request pays the
   key's checksum, hash and cached lookup; and with rate limiting on, counted in Redis
   (REDIS_URL, default redis://127.0.0.1:6379/0, under a key prefix of this run's own, deleted
   after; `--rate-limit memory` counts in the process, `off` turns it off), with a limit so
   high that no request is refused: every request pays both counters' round trip;
4. checks both return the same first page, then loads GET /api/templates?limit=50 on each with
   `wrk` (or, without wrk, a Python asyncio client) at 32 connections, alternating the servers
   A B / B A / A B ... so drift cancels out;
5. prints a Markdown table of the medians and the spawnpoint/baseline throughput ratio, writes it
   to bench/results/api_read.md, and drops the database (also on failure or Ctrl-C).

Exit status: 0 when the ratio meets --goal (default 0.6), 1 when it does not, 2 on error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis

from _common import (
    LOCALHOST,
    LoadResult,
    ScratchDatabase,
    Server,
    free_port,
    http_get,
    load_tool,
    markdown_table,
    median,
    migrated_deployment,
    raise_on_sigterm,
    run_checked,
    run_load,
    server_process,
    venv_command,
    write_result,
)

DEMO_TENANT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")
DEMO_PLAN_ID = uuid.UUID("00000000-0000-0000-0000-000000000010")
DEMO_ADMIN_ID = uuid.UUID("00000000-0000-0000-0000-000000001000")
DEMO_ADMIN_EMAIL = "admin@demo.local"
JWT_SECRET = "bench-api-read-" + "s" * 40
POOL_SIZE = 10
PATH = "/api/templates?limit=50"
PAGE_SIZE = 50
RATE_LIMIT = "1000000000"  # per minute: every request is counted, none refused
WATCHDOG_SECONDS = 175  # the whole run, set-up and clean-up included, stays under 3 minutes

DEMO_TEMPLATES = 200  # including the one the first migration seeds
PLATFORM_TEMPLATES = 8
OTHER_TENANTS = 15
TEMPLATES_PER_OTHER_TENANT = 200


# --------------------------------------------------------------------------- seeding


def spec_for(i: int, version: int) -> dict[str, Any]:
    """A realistic TemplateSpec, keys in the model's field order so both servers emit the same."""
    return {
        "command": f"python3 -m http.server {{port}} --bind 127.0.0.1 --directory "
        f"{{workspace_dir}}/site-{i}",
        "image": None if i % 3 else f"registry.example.test/team/app-{i % 17}:v{version}",
        "cpu": float(1 + i % 4) / (1 if version > 1 else 2),
        "memory_mb": 256 * (1 + i % 8) * version,
        "storage_gb": 1 + i % 20,
        "ports": [8000 + i % 50, 9000 + i % 7] if i % 2 else [],
        "env": {"APP_ENV": "bench", "WORKERS": str(1 + i % 4), "FEATURE_FLAGS": "a,b,c"},
        "idle_timeout_minutes": 30 + i % 90,
        "max_lifetime_days": 7,
        "hourly_cost": round(0.05 * (1 + i % 10), 2),
        "restricted": i % 11 == 0,
        "stages": {},
    }


def seed(db: ScratchDatabase) -> dict[str, int]:
    """Tenants, then templates with their versions, loaded with COPY; then ANALYZE."""
    rng = random.Random(20240528)
    now = datetime.now(UTC)
    tenant_ids = [uuid.UUID(int=0xB0000000_0000_7000_8000_000000000000 + n) for n in range(1, 16)]
    owners: list[uuid.UUID | None] = (
        [DEMO_TENANT_ID] * (DEMO_TEMPLATES - 1)
        + [None] * PLATFORM_TEMPLATES
        + [t for t in tenant_ids[:OTHER_TENANTS] for _ in range(TEMPLATES_PER_OTHER_TENANT)]
    )
    rng.shuffle(owners)
    # Increasing ids in shuffled owner order: every tenant's rows spread over the whole key range.
    start_ms = int((now - timedelta(days=30)).timestamp() * 1000)
    ids = [
        uuid.UUID(int=((start_ms + n) << 80) | (0x7 << 76) | (0x2 << 62) | rng.getrandbits(62))
        for n in range(len(owners))
    ]
    with psycopg.connect(db.url, autocommit=False) as conn:
        with conn.cursor().copy(
            "COPY tenants (id, name, slug, plan_id, status, created_at, updated_at) FROM STDIN"
        ) as copy:
            for n, tenant_id in enumerate(tenant_ids[:OTHER_TENANTS]):
                copy.write_row(
                    (tenant_id, f"Bench {n}", f"bench-{n}", DEMO_PLAN_ID, "active", now, now)
                )
        version_rows: list[tuple[object, ...]] = []
        with conn.cursor().copy(
            "COPY templates (id, tenant_id, name, description, provisioner, current_version, "
            "created_at, updated_at) FROM STDIN"
        ) as copy:
            for i, (template_id, owner) in enumerate(zip(ids, owners, strict=True)):
                current = 1 + i % 3
                created = now - timedelta(days=30) + timedelta(seconds=i)
                copy.write_row(
                    (
                        template_id,
                        owner,
                        f"bench-template-{i:05d}",
                        f"Benchmark template {i}: a web app with {1 + i % 4} workers "
                        "and a small scratch disk.",
                        "local",
                        current,
                        created,
                        created + timedelta(hours=current),
                    )
                )
                version_rows.extend(
                    (
                        template_id,
                        owner,
                        version,
                        "local",
                        json.dumps(spec_for(i, version)),
                        DEMO_ADMIN_ID if owner == DEMO_TENANT_ID else None,
                        created + timedelta(hours=version),
                    )
                    for version in range(1, current + 1)
                )
        # One COPY at a time: a connection cannot interleave two.
        with conn.cursor().copy(
            "COPY template_versions (template_id, tenant_id, version, provisioner, spec, "
            "created_by, created_at) FROM STDIN"
        ) as copy:
            for row in version_rows:
                copy.write_row(row)
        # The migrations' demo template was stored before specs had `stages`; spawnpoint
        # reads it with the default, the bare baseline as stored: store it with the default.
        conn.execute(
            "UPDATE template_versions SET spec = (spec::jsonb || '{\"stages\": {}}')::json"
            " WHERE NOT spec::jsonb ? 'stages'"
        )
        conn.commit()
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        counts = conn.execute(
            "SELECT count(*) FILTER (WHERE tenant_id = %s),"
            " count(*) FILTER (WHERE tenant_id IS NULL), count(*) FROM templates",
            (DEMO_TENANT_ID,),
        ).fetchone()
    assert counts is not None
    return {
        "demo": counts[0],
        "platform": counts[1],
        "total": counts[2],
        "versions": len(version_rows) + 1,
    }


# --------------------------------------------------------------------------- checks


def first_page(server: Server, headers: dict[str, str]) -> dict[str, Any]:
    status, body = http_get(server.base_url + PATH, headers)
    if status != 200:
        raise RuntimeError(f"{server.name}: GET {PATH} answered {status}: {body[:500]!r}")
    page: dict[str, Any] = json.loads(body)
    return page


def check_same_page(spawn: dict[str, Any], base: dict[str, Any]) -> None:
    """Both servers must do the same work: a full page, the same items, the same cursor."""
    if len(spawn["items"]) != PAGE_SIZE or spawn["next_cursor"] is None:
        raise RuntimeError(f"spawnpoint returned {len(spawn['items'])} items, want a full page")
    owners = {item["tenant_id"] for item in spawn["items"]}
    if not owners <= {str(DEMO_TENANT_ID), None}:
        raise RuntimeError(f"spawnpoint leaked other tenants' templates: {owners}")
    if spawn != base:
        for a, b in zip(spawn["items"], base["items"], strict=False):
            if a != b:
                diff = {
                    k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)
                }
                raise RuntimeError(f"the servers disagree on item {a.get('id')}: {diff}")
        raise RuntimeError(
            f"the servers disagree: {len(spawn['items'])} vs {len(base['items'])} items, "
            f"cursor {spawn['next_cursor']!r} vs {base['next_cursor']!r}"
        )


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2, help="discarded seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--goal", type=float, default=0.6, help="minimum spawnpoint/baseline")
    parser.add_argument("--tool", choices=["wrk", "python-asyncio"], default=None)
    parser.add_argument(
        "--auth", choices=["api-key", "jwt"], default="api-key", help="how spawnpoint is called"
    )
    parser.add_argument(
        "--rate-limit",
        choices=["redis", "memory", "off"],
        default="redis",
        help="rate-limit storage (default redis, at --redis-url)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("SPAWNPOINT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=0,
        help="after the rounds, keep both servers up this many seconds (for attaching a profiler)",
    )
    args = parser.parse_args()
    budget = args.rounds * 2 * (args.seconds + args.warmup) + args.hold
    if budget > 150:
        parser.error(f"{budget:.0f} s of load is over the 150 s budget; lower --rounds/--seconds")
    return args


def rate_limit_env(stack: contextlib.ExitStack, args: argparse.Namespace) -> dict[str, str]:
    """The server's rate-limit settings; with Redis, a key prefix deleted when `stack` closes."""
    if args.rate_limit == "off":
        return {"RATE_LIMIT_PER_MINUTE": "0", "RATE_LIMIT_TENANT_PER_MINUTE": "0"}
    env = {"RATE_LIMIT_PER_MINUTE": RATE_LIMIT, "RATE_LIMIT_TENANT_PER_MINUTE": RATE_LIMIT}
    if args.rate_limit == "memory":
        return env
    client = redis.Redis.from_url(args.redis_url)
    client.ping()  # fail now, not under load
    prefix = f"spawnpoint-bench-{uuid.uuid4().hex[:12]}"

    def drop_keys() -> None:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()

    stack.callback(drop_keys)
    return {**env, "REDIS_URL": args.redis_url, "RATE_LIMIT_KEY_PREFIX": prefix}


def main() -> int:
    args = parse_args()
    raise_on_sigterm(deadline=WATCHDOG_SECONDS)
    tool = args.tool or load_tool()
    started = time.monotonic()
    spawnpoint = venv_command("spawnpoint")
    with contextlib.ExitStack() as stack:
        deployment = migrated_deployment(
            stack,
            "api-read",
            spawnpoint,
            jwt_secret=JWT_SECRET,
            pool_size=POOL_SIZE,
            **rate_limit_env(stack, args),
        )
        workdir, db, env = deployment.workdir, deployment.db, deployment.env
        counts = seed(db)
        print(
            f"seeded {counts['demo']} demo + {counts['platform']} platform templates of "
            f"{counts['total']} ({counts['versions']} versions)",
            flush=True,
        )
        if args.auth == "jwt":
            command = ["token", "create", "--user", DEMO_ADMIN_EMAIL, "--ttl", "1h"]
        else:
            command = ["api-key", "create", "--user", DEMO_ADMIN_EMAIL, "--name", "bench"]
        token = run_checked([*spawnpoint, *command], env=env, cwd=workdir, timeout=60).strip()
        auth = {"Authorization": f"Bearer {token}"}

        spawn_port, base_port = free_port(), free_port()
        spawn = stack.enter_context(
            server_process(
                "spawnpoint",
                [
                    *spawnpoint,
                    "serve",
                    "--no-migrate",
                    "--host",
                    LOCALHOST,
                    "--port",
                    str(spawn_port),
                ],
                env={**env, "PORT": str(spawn_port)},
                port=spawn_port,
                cwd=workdir,
                ready_path="/health",
            )
        )
        base = stack.enter_context(
            server_process(
                "baseline",
                [
                    sys.executable,
                    str(Path(__file__).resolve().with_name("baseline_app.py")),
                    "--host",
                    LOCALHOST,
                    "--port",
                    str(base_port),
                    "--log-level",
                    "warning",
                ],
                env={**env, "PORT": str(base_port), "DEMO_TENANT_ID": str(DEMO_TENANT_ID)},
                port=base_port,
                cwd=workdir,
                ready_path="/docs",
            )
        )
        check_same_page(first_page(spawn, auth), first_page(base, {}))
        print(
            f"both servers return the same full page; load: {tool}, {args.connections} "
            f"connections, {args.warmup:g} s warm-up + {args.seconds:g} s per run",
            flush=True,
        )

        targets = {"spawnpoint": (spawn, auth), "baseline": (base, {})}
        runs: dict[str, list[LoadResult]] = {"spawnpoint": [], "baseline": []}
        for round_no in range(args.rounds):
            order = ["spawnpoint", "baseline"]
            if round_no % 2:
                order.reverse()  # A B, B A, A B, ...: linear drift hits both sides equally
            for name in order:
                server, headers = targets[name]
                result = run_load(
                    server.base_url + PATH,
                    headers=headers,
                    connections=args.connections,
                    seconds=args.seconds,
                    warmup=args.warmup,
                    tool=tool,
                    workdir=workdir,
                    server_pid=server.process.pid,
                )
                if server.process.poll() is not None:
                    raise RuntimeError(f"{name} died under load:\n{server.log_tail()}")
                if result.errors:
                    raise RuntimeError(
                        f"{name}: {result.errors} errors / non-2xx responses under load:\n"
                        f"{server.log_tail()}"
                    )
                runs[name].append(result)
                print(
                    f"round {round_no + 1}/{args.rounds} {name:>10}: {result.rps:8.1f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                    f"server CPU {result.cpu_ms_per_request:5.2f} ms/req",
                    flush=True,
                )
        if args.hold > 0:
            print(
                f"holding: spawnpoint pid {spawn.process.pid} at {spawn.base_url}, baseline pid "
                f"{base.process.pid} at {base.base_url}, token in {workdir / 'token'}",
                flush=True,
            )
            (workdir / "token").write_text(token)
            time.sleep(args.hold)

    report = render(runs, tool=tool, args=args, counts=counts)
    path = write_result("api_read.md", report)
    print()
    print(report)
    print(f"written to {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    print(f"total {time.monotonic() - started:.0f} s")
    ratio = median([r.rps for r in runs["spawnpoint"]]) / median([r.rps for r in runs["baseline"]])
    return 0 if ratio >= args.goal else 1


def render(
    runs: dict[str, list[LoadResult]],
    *,
    tool: str,
    args: argparse.Namespace,
    counts: dict[str, int],
) -> str:
    summary = {
        name: (
            median([r.rps for r in results]),
            median([r.p50_ms for r in results]),
            median([r.p99_ms for r in results]),
            median([r.cpu_ms_per_request for r in results]),
        )
        for name, results in runs.items()
    }
    ratio = summary["spawnpoint"][0] / summary["baseline"][0]
    cpu_ratio = summary["baseline"][3] / summary["spawnpoint"][3]
    table = markdown_table(
        ["server", "requests/s", "p50 ms", "p99 ms", "server CPU ms/req"],
        [
            (name, f"{rps:.1f}", f"{p50:.2f}", f"{p99:.2f}", f"{cpu:.2f}")
            for name, (rps, p50, p99, cpu) in summary.items()
        ],
    )
    per_round = markdown_table(
        ["round", "server", "requests/s", "p50 ms", "p99 ms", "server CPU ms/req"],
        [
            (
                n + 1,
                name,
                f"{r.rps:.1f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.cpu_ms_per_request:.2f}",
            )
            for n in range(len(runs["spawnpoint"]))
            for name, results in runs.items()
            for r in results[n : n + 1]
        ],
    )
    verdict = "meets" if ratio >= args.goal else "is BELOW"
    return (
        f"# GET {PATH}: spawnpoint vs bare FastAPI baseline\n\n"
        f"Median of {args.rounds} alternating rounds; load generator **{tool}**, "
        f"{args.connections} connections, {args.warmup:g} s warm-up + {args.seconds:g} s "
        f"measured per run; data: {counts['demo']} demo-tenant + {counts['platform']} platform "
        f"of {counts['total']} templates; spawnpoint called with "
        f"{'an API key' if args.auth == 'api-key' else 'a JWT'}, rate limiting "
        f"{'off' if args.rate_limit == 'off' else 'on (' + args.rate_limit + ' storage)'}. "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}.\n\n"
        f"{table}\n\n"
        f"**spawnpoint / baseline requests/s = {ratio:.2f}** ({verdict} the goal of "
        f"{args.goal:g}).\n\n"
        f"Server CPU per request, baseline / spawnpoint = {cpu_ratio:.2f}: the throughput ratio to "
        "expect while both servers are CPU-bound (CPU time per request is much less "
        "sensitive than requests/s to other load on the machine).\n\n"
        f"<details><summary>every run</summary>\n\n{per_round}\n\n</details>\n"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError, psycopg.Error, redis.RedisError) as exc:
        print(f"api_read: {exc}", file=sys.stderr)
        sys.exit(2)
