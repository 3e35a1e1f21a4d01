"""A PostgreSQL server of the chaos tests' own, which they may stop, crash and restart.

The shared test server is never touched: `initdb` builds a cluster in a temporary directory
and `pg_ctl` runs it on a free loopback port. initdb refuses to run as root, so as root the
cluster belongs to the `postgres` system user and every server command runs as that user.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import random
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import psycopg

SERVER_USER = "postgres"
START_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ephemeral_ports() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(int(low), int(high) + 1)


def stable_port() -> int:
    """A free port outside the ephemeral range, so it stays free while the server is down.

    Outgoing connections (the reconnect attempts during an outage among them) take their
    local ports from the ephemeral range; one of them could hold an ephemeral port just
    when the server restarts and must listen on it again.
    """
    ephemeral = _ephemeral_ports()
    chooser = random.Random()
    for _ in range(200):
        port = chooser.randrange(10_000, 32_000)
        if port in ephemeral:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


def server_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PrivatePostgres:
    """One PostgreSQL cluster in `directory`, listening on 127.0.0.1:`port` only."""

    def __init__(self, binaries: Path, directory: Path) -> None:
        self.binaries = binaries
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "server.log"
        self.port = stable_port()
        self.run_as = SERVER_USER if os.geteuid() == 0 else None

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.binaries / program), *args]
        return ["runuser", "-u", self.run_as, "--", *command] if self.run_as else command

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            self._command(program, *args), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def init(self) -> None:
        if self.run_as:
            account = pwd.getpwnam(self.run_as)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start_command(self) -> list[str]:
        """`pg_ctl start`, waiting until the server accepts connections."""
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.directory}",
                "-c max_connections=300",
                # Durability against a server crash (what the tests do) needs no fsync: the
                # WAL a commit wrote is in the kernel's page cache and recovery replays it.
                "-c fsync=off",
                "-c full_page_writes=off",
            ]
        )
        return self._command(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "-o",
            options,
        )

    def stop_command(self, mode: str = "fast") -> list[str]:
        """`pg_ctl stop`: `fast` ends sessions cleanly; `immediate` crashes (recovery on start)."""
        return self._command("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w")

    def start(self) -> None:
        done = subprocess.run(self.start_command(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed:\n{done.stdout}{done.stderr}\n{self.log_tail()}"
            )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self.stop_command(mode), capture_output=True, check=False)

    def running(self) -> bool:
        status = self._command("pg_ctl", "status", "-D", str(self.data))
        return subprocess.run(status, capture_output=True, check=False).returncode == 0

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self, mode: str = "fast") -> None:
        await asyncio.to_thread(self.stop, mode)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def create_database(self, *, template: str | None = None) -> str:
        """A new empty database (or a copy of `template`); returns its name."""
        name = f"chaos_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        return name
