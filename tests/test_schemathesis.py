"""schemathesis against spawnpoint's embedded default, as a client would meet it.

`spawnpoint serve` runs on SQLite with its in-process worker (what `make run` starts), and
schemathesis' command line drives it through its own OpenAPI document with every check,
in its coverage, fuzzing and stateful phases, with a fixed seed and a bounded number of
examples. Any failure fails the test with schemathesis' report.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent
CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = "20261201"
MAX_EXAMPLES = "25"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "ENVIRONMENT": "development",
        "PROVISIONER": "dry-run",
        "LOG_LEVEL": "warning",
        # Limits on, but out of reach of one client's run (429s are documented anyway).
        "RATE_LIMIT_PER_MINUTE": "1000000000",
        "RATE_LIMIT_TENANT_PER_MINUTE": "1000000000",
        "LOGIN_FAILURES_PER_IP": "1000000000",
    }
    env.pop("DATABASE_URL", None)
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [str(BIN / "spawnpoint"), "serve"], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "spawnpoint serve did not become ready"
            time.sleep(0.05)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_schemathesis_finds_nothing(served: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            str(BIN / "st"),
            "--config-file",
            str(CONFIG),
            "run",
            f"{served}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "coverage,fuzzing,stateful",
            "--seed",
            SEED,
            "--max-examples",
            MAX_EXAMPLES,
            "--workers",
            "1",
            "--header",
            "Authorization: Bearer DEV-LOCAL-TOKEN",
            "--request-timeout",
            "10",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "Tested: " in run.stdout
