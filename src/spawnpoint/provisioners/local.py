"""The `local` driver: a template's command as a supervised process on the worker's host.

Each workspace gets the directory `DATA_DIR/workspaces/<workspace id>`, a free loopback
port, and its own session and process group, so signals to the worker (Ctrl-C, a restart)
never reach it and `stop` can signal everything it started. Its output goes to
`<workspace dir>/.spawnpoint/output.log`, a file rather than a pipe, so the process outlives
the worker that launched it; the driver tails that file into the job log while it waits for
the port to answer HTTP.

The process is identified by its pid *and* its start time (field 22 of /proc/<pid>/stat,
or `ps -o lstart` where there is no /proc), so a pid the kernel has since given to another
process is never mistaken for the workspace, and never signalled.

Idempotency: the driver writes `.spawnpoint/process.json` the moment the process exists,
before anything can fail, and consults it before the saved state. A provision re-run after
the worker died therefore finds the process even though the workspace's state was never
saved, and an exclusive lock on `.spawnpoint/lock` keeps two attempts from racing. A
launch creates `.spawnpoint/launching` before it starts the process, writes the record into
it and renames it to `process.json`, so only an attempt that finds it (its predecessor died
in between) looks through /proc for an unrecorded process to kill; the common path never
scans the host's processes.

The process keeps running when the worker stops; the driver only ever stops it on `stop` or
`destroy`. POSIX only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from spawnpoint.config import Settings
from spawnpoint.kit.clock import utcnow
from spawnpoint.provisioners.base import (
    PermanentProvisionerError,
    ProvisionContext,
    Provisioner,
    ProvisionerConfig,
    ProvisionerError,
    ProvisionResult,
    WorkspaceStatus,
)

log = logging.getLogger("spawnpoint.provisioners.local")

HOST = "127.0.0.1"
PROC = Path("/proc")
BOOT_ID = PROC / "sys" / "kernel" / "random" / "boot_id"
# Variables passed through from the worker: enough to find programs and print text. Nothing
# else, so the worker's secrets (database URL, JWT secret) never reach a workspace.
PASSED_THROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
KILL_WAIT_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 1.0
# Any HTTP server answers this; HTTP/1.0 so it closes the connection after its response.
PROBE_REQUEST = b"GET / HTTP/1.0\r\nHost: %s:%d\r\nUser-Agent: spawnpoint\r\n\r\n"
# Readiness probes: every READY_STEP_SECONDS while the process is young (most servers
# answer within a few hundred ms, and a closed loop of clients waits for each), then
# doubling up to READY_MAX_STEP_SECONDS for slow starters. A failed probe is one refused
# loopback connect, tens of microseconds.
READY_STEP_SECONDS = 0.01
READY_FAST_FOR_SECONDS = 1.0
READY_MAX_STEP_SECONDS = 0.25
# Reap exited children of other workspaces at most this often (each is a waitpid).
REAP_ALL_EVERY_SECONDS = 1.0
# The kernel may offer a port a launch that is still starting was given; ask again.
FREE_PORT_TRIES = 8
TAIL_BYTES = 16_384
MAX_LOGGED_LINES = 200


class LocalConfig(ProvisionerConfig):
    """Configuration of the `local` driver; environment variables start with `LOCAL_`."""

    model_config = SettingsConfigDict(env_prefix="LOCAL_")

    data_dir: Path = Field(
        Path("./data"), description="Workspaces live in DATA_DIR/workspaces (from DATA_DIR)."
    )
    ready_timeout_seconds: float = Field(
        30.0, gt=0, description="How long a new process has to answer HTTP on its port."
    )
    stop_grace_seconds: float = Field(
        10.0, ge=0, description="How long `stop` waits after SIGTERM before sending SIGKILL."
    )
    output_tail_lines: int = Field(
        20, ge=1, description="Lines of output quoted when a process fails to become ready."
    )
    max_output_bytes: int = Field(
        10 * 1024 * 1024,
        ge=0,
        description="At each start, an output file larger than this is moved to output.log.1.",
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalConfig:
        return cls(data_dir=settings.data_dir)


@dataclass(frozen=True, slots=True)
class _Process:
    """The identity of a workspace process: a pid is only meaningful with its start time."""

    pid: int
    start_time: str
    boot_id: str | None
    port: int

    def as_state(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "boot_id": self.boot_id,
            "port": self.port,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Process | None:
        pid, start_time, port = state.get("pid"), state.get("start_time"), state.get("port")
        boot_id = state.get("boot_id")
        if not (isinstance(pid, int) and pid > 0 and isinstance(start_time, str)):
            return None
        if not isinstance(port, int) or not (boot_id is None or isinstance(boot_id, str)):
            return None
        return cls(pid=pid, start_time=start_time, boot_id=boot_id, port=port)


@dataclass(frozen=True, slots=True)
class _Paths:
    root: Path
    meta: Path
    output: Path
    record: Path
    lock: Path
    launching: Path

    @classmethod
    def of(cls, data_dir: Path, ctx: ProvisionContext) -> _Paths:
        # Absolute, because the command runs with the workspace as its working directory and
        # receives this path through {workspace_dir}.
        root = _workspaces_dir(data_dir) / str(ctx.workspace.id)
        meta = root / ".spawnpoint"
        return cls(
            root=root,
            meta=meta,
            output=meta / "output.log",
            record=meta / "process.json",
            lock=meta / "lock",
            launching=meta / "launching",
        )


def _workspaces_dir(data_dir: Path) -> Path:
    if not data_dir.is_absolute():
        return (data_dir / "workspaces").resolve()
    return _resolved_workspaces_dir(data_dir)


@functools.lru_cache(maxsize=16)
def _resolved_workspaces_dir(data_dir: Path) -> Path:
    # Resolved once per absolute data dir (resolving is a walk of lstat calls); the driver
    # itself creates everything below it.
    return (data_dir / "workspaces").resolve()


def connection_for(port: int) -> dict[str, Any]:
    return {"url": f"http://{HOST}:{port}/", "host": HOST, "port": port, "protocol": "http"}


class LocalProvisioner(Provisioner[LocalConfig]):
    """Runs the template's `command` as a local process; see the module docstring."""

    name = "local"
    config_model = LocalConfig
    runs_host_commands = True

    def __init__(self, config: LocalConfig) -> None:
        super().__init__(config)
        # Handles of the processes this instance launched, kept only so they are reaped
        # (waited for) when they exit. Processes launched by an earlier worker are
        # reparented to init, which reaps them.
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._reaped_all_at = 0.0
        # Ports handed to launches whose command may not listen on them yet.
        self._starting_ports: set[int] = set()

    async def provision(self, ctx: ProvisionContext) -> ProvisionResult:
        return await self._ensure_running(ctx, verb="provision")

    async def start(self, ctx: ProvisionContext) -> ProvisionResult:
        return await self._ensure_running(ctx, verb="start")

    async def stop(self, ctx: ProvisionContext) -> ProvisionResult:
        paths = _Paths.of(self.config.data_dir, ctx)
        async with self._locked(paths):
            process = await self._stop_locked(ctx, paths)
        port = process.port if process is not None else ctx.state.get("port")
        state: dict[str, Any] = {"workspace_dir": str(paths.root), "running": False}
        # Keep the port, so the next start serves the same URL when the port is still free.
        if isinstance(port, int):
            state["port"] = port
        state["stopped_at"] = utcnow().isoformat()
        return ProvisionResult(state=state, connection=None)

    async def destroy(self, ctx: ProvisionContext) -> None:
        paths = _Paths.of(self.config.data_dir, ctx)
        if not paths.root.exists():
            # Never provisioned here, or already destroyed; still make sure no process from
            # the saved state survives.
            process = _Process.from_state(ctx.state)
            if process is not None and _identity_matches(process):
                await self._terminate(ctx, process)
            return
        async with self._locked(paths):
            await self._stop_locked(ctx, paths)
            try:
                await asyncio.to_thread(shutil.rmtree, paths.root)
            except OSError as exc:
                raise ProvisionerError(f"cannot remove {paths.root}: {exc}") from exc
        await ctx.log(f"removed {paths.root}")

    async def status(self, ctx: ProvisionContext) -> WorkspaceStatus:
        self._reap()
        paths = _Paths.of(self.config.data_dir, ctx)
        process = _read_record(paths) or _Process.from_state(ctx.state)
        if process is None:
            return WorkspaceStatus(running=False, detail="stopped")
        if _identity_matches(process):
            return WorkspaceStatus(
                running=True,
                connection=connection_for(process.port),
                detail=f"running (pid {process.pid})",
            )
        return WorkspaceStatus(running=False, detail=f"exited (pid {process.pid} is gone)")

    async def _ensure_running(self, ctx: ProvisionContext, *, verb: str) -> ProvisionResult:
        self._reap()
        paths = _Paths.of(self.config.data_dir, ctx)
        async with self._locked(paths):
            # The record on disk is written before anything can fail, so it is at least as
            # recent as the saved state, which an interrupted attempt never got to save.
            recorded = _read_record(paths) or _Process.from_state(ctx.state)
            if recorded is not None and _identity_matches(recorded):
                await ctx.log(f"process {recorded.pid} is already running; reusing it")
                offset = _size(paths.output)
                await self._wait_ready(ctx, paths, recorded, offset)
                return self._running_result(ctx, paths, recorded)
            if recorded is not None:
                await ctx.log(f"process {recorded.pid} is gone; starting a new one")
            await _kill_unrecorded(ctx, paths)
            argv_template = _command(ctx.spec)
            env_extra = _spec_env(ctx.spec)
            preferred = recorded.port if recorded else ctx.state.get("port")
            port = _free_port(
                preferred if isinstance(preferred, int) else None, taken=self._starting_ports
            )
            argv = [
                token.replace("{port}", str(port)).replace("{workspace_dir}", str(paths.root))
                for token in argv_template
            ]
            env = _environment(paths.root, env_extra, port)
            await ctx.log(f"{verb}: running {shlex.join(argv)} in {paths.root} on port {port}")
            # Until its command listens on it, the port looks free to other launches too.
            self._starting_ports.add(port)
            try:
                process, offset = await self._launch(argv, env, paths, port)
                await ctx.log(f"started process {process.pid}")
                await self._wait_ready(ctx, paths, process, offset)
            finally:
                self._starting_ports.discard(port)
            return self._running_result(ctx, paths, process)

    def _running_result(
        self, ctx: ProvisionContext, paths: _Paths, process: _Process
    ) -> ProvisionResult:
        state = {
            **process.as_state(),
            "workspace_dir": str(paths.root),
            "running": True,
            "started_at": ctx.state.get("started_at")
            if ctx.state.get("pid") == process.pid
            else utcnow().isoformat(),
        }
        return ProvisionResult(state=state, connection=connection_for(process.port))

    async def _launch(
        self, argv: list[str], env: dict[str, str], paths: _Paths, port: int
    ) -> tuple[_Process, int]:
        try:
            # One trip to a thread for every blocking step: the files, the fork and exec,
            # the start time and the record.
            launched = await asyncio.to_thread(_start, argv, env, paths, self.config, port)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise PermanentProvisionerError(f"cannot run {argv[0]!r}: {exc}") from exc
        except OSError as exc:
            raise ProvisionerError(f"cannot start {argv[0]!r}: {exc}") from exc
        popen, offset = launched.popen, launched.offset
        self._children[popen.pid] = popen
        if launched.process is None:
            # It exited before its start time could be read; report its output. The launch
            # marker stays, so the next attempt looks for anything it left behind.
            await _kill_orphans(popen.pid)
            raise ProvisionerError(
                f"the command exited{_exit_status(popen)} at once; "
                f"last output:\n{_tail(paths.output, offset, self.config.output_tail_lines)}"
            )
        if launched.record_error is not None:
            # Unrecorded, a retry could not find it and would start a second one.
            _signal_group(popen.pid, signal.SIGKILL)
            raise ProvisionerError(
                f"cannot record process {popen.pid}: {launched.record_error}"
            ) from launched.record_error
        return launched.process, offset

    async def _wait_ready(
        self, ctx: ProvisionContext, paths: _Paths, process: _Process, offset: int
    ) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self.config.ready_timeout_seconds
        url = connection_for(process.port)["url"]
        # This instance's own child cannot have handed its pid on before it is waited for,
        # so a waitpid tells whether it still runs; any other process is checked by identity.
        popen = self._children.get(process.pid)
        delay = READY_STEP_SECONDS
        with _Tailer(paths.output, offset) as tailer:
            while True:
                await tailer.forward(ctx)
                if not (popen.poll() is None if popen else _identity_matches(process)):
                    await tailer.forward(ctx, final=True)
                    await _kill_orphans(process.pid)
                    _remove(paths.record)
                    raise ProvisionerError(
                        f"the command exited{_exit_status(popen)} before answering "
                        f"on port {process.port}; last output:\n"
                        f"{_tail(paths.output, offset, self.config.output_tail_lines)}"
                    )
                if await _answers_http(process.port):
                    await tailer.forward(ctx, final=True)
                    await ctx.log(f"ready at {url}")
                    return
                now = loop.time()
                if now >= deadline:
                    await tailer.forward(ctx, final=True)
                    await ctx.log("not ready in time; stopping it so a retry starts afresh")
                    await self._terminate(ctx, process)
                    _remove(paths.record)
                    raise ProvisionerError(
                        f"nothing answered HTTP on port {process.port} within "
                        f"{self.config.ready_timeout_seconds:g} s; last output:\n"
                        f"{_tail(paths.output, offset, self.config.output_tail_lines)}"
                    )
                await asyncio.sleep(min(delay, deadline - now))
                if now - began >= READY_FAST_FOR_SECONDS:
                    delay = min(delay * 2, READY_MAX_STEP_SECONDS)

    async def _stop_locked(self, ctx: ProvisionContext, paths: _Paths) -> _Process | None:
        """Stop the recorded process if it still runs; return what was recorded."""
        self._reap()
        process = _read_record(paths) or _Process.from_state(ctx.state)
        if process is not None and _identity_matches(process):
            await self._terminate(ctx, process)
        _remove(paths.record)
        await _kill_unrecorded(ctx, paths)
        return process

    async def _terminate(self, ctx: ProvisionContext, process: _Process) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period, wait until gone."""
        # The process leads its own session, so its process group id is its pid.
        pgid = process.pid
        await ctx.log(f"stopping process {process.pid} (SIGTERM)")
        _signal_group(pgid, signal.SIGTERM)
        if await self._wait_gone(process, self.config.stop_grace_seconds):
            return
        await ctx.log(
            f"process {process.pid} did not exit within "
            f"{self.config.stop_grace_seconds:g} s of SIGTERM; sending SIGKILL"
        )
        _signal_group(pgid, signal.SIGKILL)
        if not await self._wait_gone(process, KILL_WAIT_SECONDS):
            raise ProvisionerError(f"process {process.pid} survived SIGKILL")

    async def _wait_gone(self, process: _Process, within: float) -> bool:
        """Wait until the leader and every other member of its process group have exited."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        delay = 0.02
        with _ExitWatch(process.pid) as watch:
            while True:
                self._reap(process.pid)
                if process.pid not in self._children:
                    # Not this instance's child (its Popen, polled above, waits for those).
                    _reap_zombie(process)
                # A pid stays allocated while a process group uses it as its id, so
                # signalling the group after the leader exited cannot hit an unrelated process.
                if not _identity_matches(process) and not _group_exists(process.pid):
                    return True
                now = loop.time()
                if now >= deadline:
                    return False
                await watch.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 0.2)

    def _reap(self, pid: int | None = None) -> None:
        """Wait for exited children: `pid` at once, all of them every so often.

        Not all of them on every call: with hundreds of workspaces running that would be
        hundreds of waitpid calls per operation.
        """
        if pid is not None:
            popen = self._children.get(pid)
            if popen is not None and popen.poll() is not None:
                del self._children[pid]
        now = time.monotonic()
        if now - self._reaped_all_at < REAP_ALL_EVERY_SECONDS:
            return
        self._reaped_all_at = now
        for child, popen in list(self._children.items()):
            if popen.poll() is not None:
                del self._children[child]

    @contextlib.asynccontextmanager
    async def _locked(self, paths: _Paths) -> AsyncIterator[None]:
        """Hold the workspace's lock, so two attempts on one workspace never interleave."""
        try:
            try:
                fd = _open_lock(paths)
            except FileNotFoundError:
                # A new workspace: only then make its directories. On the loop: a trip to a
                # thread waits for the GIL behind the loop's own work (65 ms at the median
                # with 10 spawns in flight on a busy machine), two mkdirs take microseconds.
                fd = _make_dirs_and_open_lock(paths)
        except OSError as exc:
            raise ProvisionerError(f"cannot lock {paths.root}: {exc}") from exc
        try:
            loop = asyncio.get_running_loop()
            patience = self.config.ready_timeout_seconds + self.config.stop_grace_seconds + 10
            deadline = loop.time() + patience
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if loop.time() >= deadline:
                        raise ProvisionerError(
                            f"another operation on {paths.root} is still running"
                        ) from None
                    await asyncio.sleep(0.05)
            yield
        finally:
            os.close(fd)


def _open_lock(paths: _Paths) -> int:
    # os.open makes a non-inheritable descriptor, so a launched process never holds it.
    return os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)


def _make_dirs_and_open_lock(paths: _Paths) -> int:
    paths.meta.mkdir(parents=True, exist_ok=True)
    return _open_lock(paths)


class _ExitWatch:
    """Sleeps that end as soon as a process exits: its pidfd on the event loop (Linux).

    Where there is no pidfd (an older kernel, another OS) they are plain sleeps. Only ever a
    shortcut: whoever sleeps checks the process again when it wakes, for whatever reason.
    """

    def __init__(self, pid: int) -> None:
        self._fd: int | None = None
        self._exited = False
        with contextlib.suppress(AttributeError, OSError):
            self._fd = os.pidfd_open(pid)

    def __enter__(self) -> _ExitWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def sleep(self, seconds: float) -> None:
        if self._fd is None or self._exited:
            await asyncio.sleep(seconds)
            return
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        def exited() -> None:
            # A pidfd turns readable when its process has exited, and stays so.
            self._exited = True
            wake()

        loop.add_reader(self._fd, exited)
        timer = loop.call_later(seconds, wake)
        try:
            await woken
        finally:
            timer.cancel()
            loop.remove_reader(self._fd)


def _exit_status(popen: subprocess.Popen[bytes] | None) -> str:
    """How a process this instance launched ended, for error messages; reaps it."""
    code = popen.poll() if popen is not None else None
    if code is None:
        return ""
    return f" (killed by signal {-code})" if code < 0 else f" with status {code}"


async def _kill_unrecorded(ctx: ProvisionContext, paths: _Paths) -> None:
    """Kill a process a launch started but never recorded, if a launch was interrupted.

    Call under the workspace's lock, with no recorded process alive. Only when the launch
    marker is there: it is written before a process is started and removed once the process
    is recorded, so without it no such process can exist and /proc is not scanned.
    """
    if not paths.launching.exists():
        return
    for leftover in _unrecorded_leaders(paths.root):
        # The worker was killed between starting this process and recording it: it would be
        # a second process of the workspace.
        await ctx.log(f"process {leftover} was started but never recorded; killing it")
        await _kill_orphans(leftover)
    _remove(paths.launching)


class _Tailer:
    """Forwards complete lines appended to a file to the job log.

    Keeps the file open while it is used (`with`), so each look for new output is one read.
    """

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.offset = offset
        self.logged = 0
        self._fd: int | None = None

    def __enter__(self) -> _Tailer:
        with contextlib.suppress(FileNotFoundError):
            self._fd = os.open(self.path, os.O_RDONLY)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read(self) -> bytes:
        if self._fd is None:
            return _read_from(self.path, self.offset)
        chunks, position = [], self.offset
        while chunk := os.pread(self._fd, 65536, position):
            chunks.append(chunk)
            position += len(chunk)
        return b"".join(chunks)

    async def forward(self, ctx: ProvisionContext, *, final: bool = False) -> None:
        chunk = self._read()
        if not chunk:
            return
        end = len(chunk) if final else chunk.rfind(b"\n") + 1
        if end == 0:
            return
        self.offset += end
        for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
            if self.logged == MAX_LOGGED_LINES:
                await ctx.log(f"(further output only in {self.path})")
            self.logged += 1
            if self.logged <= MAX_LOGGED_LINES:
                await ctx.log(f"| {line}")


def _command(spec: dict[str, Any]) -> list[str]:
    command = spec.get("command")
    if not isinstance(command, str) or not command.strip():
        raise PermanentProvisionerError("the local provisioner needs the template's `command`")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise PermanentProvisionerError(
            f"the template's `command` cannot be parsed: {exc}"
        ) from exc
    if not argv:
        raise PermanentProvisionerError("the template's `command` is empty")
    return argv


def _spec_env(spec: dict[str, Any]) -> dict[str, str]:
    env = spec.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in env.items()
    ):
        raise PermanentProvisionerError("the template's `env` must map names to strings")
    return env


def _environment(root: Path, extra: dict[str, str], port: int) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_THROUGH_ENV if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env["HOME"] = str(root)
    env.update(extra)
    env["PORT"] = str(port)
    return env


def _free_port(preferred: int | None, *, taken: Collection[int] = ()) -> int:
    """A loopback port nobody listens on and not in `taken`; the preferred one (the last
    run's) when free.

    Another program could take the port between this check and the command binding it; the
    command then fails to start and the job's retry picks another port.
    """
    candidates = [preferred] if preferred and preferred not in taken else []
    candidates += [0] * FREE_PORT_TRIES
    for candidate in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As servers do, so a port in TIME_WAIT from the last run counts as free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            if port not in taken:
                return port
    raise ProvisionerError("no free loopback port")


@dataclass(frozen=True, slots=True)
class _Launched:
    popen: subprocess.Popen[bytes]
    offset: int  # where this run's output starts in the output file
    process: _Process | None  # None: it exited before its start time could be read
    record_error: OSError | None = None


def _start(
    argv: list[str], env: dict[str, str], paths: _Paths, config: LocalConfig, port: int
) -> _Launched:
    """Start the process and record it (blocking calls, for a thread)."""
    popen, offset = _spawn(argv, env, paths, config)
    start_time = _start_time(popen.pid)
    if start_time is None:
        return _Launched(popen, offset, None)
    process = _Process(pid=popen.pid, start_time=start_time, boot_id=_boot_id(), port=port)
    try:
        _write_record(paths, process)
    except OSError as exc:
        return _Launched(popen, offset, process, exc)
    return _Launched(popen, offset, process)


def _open_output(paths: _Paths, config: LocalConfig) -> BinaryIO:
    """The output file opened for appending; first moved to output.log.1 when too large."""
    try:
        output = paths.output.open("ab")
    except FileNotFoundError:
        paths.meta.mkdir(parents=True, exist_ok=True)
        return paths.output.open("ab")
    if os.fstat(output.fileno()).st_size <= config.max_output_bytes:
        return output
    output.close()
    paths.output.replace(paths.output.with_name(paths.output.name + ".1"))
    return paths.output.open("ab")


def _spawn(
    argv: list[str], env: dict[str, str], paths: _Paths, config: LocalConfig
) -> tuple[subprocess.Popen[bytes], int]:
    with _open_output(paths, config) as output:
        output.write(f"--- {utcnow().isoformat()} spawnpoint: {shlex.join(argv)}\n".encode())
        output.flush()
        offset = output.tell()
        # Before the process exists, so a worker killed before it records the process leaves
        # the marker that makes the next attempt look for it (`_kill_unrecorded`).
        os.close(os.open(paths.launching, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        try:
            popen = subprocess.Popen(  # noqa: S603 - argv comes from an operator-only template
                argv,
                cwd=paths.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own session and process group: the worker's signals do not reach it,
                # and `stop` can signal it together with everything it starts.
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            # Popen raises only once the child is gone (it could not exec): nothing to find.
            _remove(paths.launching)
            raise
    return popen, offset


def _probe(pid: int) -> tuple[str, str] | None:
    """Return (state letter, start time) of `pid`, or None when there is no such process."""
    if _has_proc(PROC):
        try:
            fd = os.open(f"{PROC}/{pid}/stat", os.O_RDONLY)
        except (FileNotFoundError, ProcessLookupError):
            return None
        try:
            stat = os.read(fd, 4096).decode(errors="replace")
        except ProcessLookupError:
            return None
        finally:
            os.close(fd)
        if not stat:
            return None
        # The command name (field 2) may contain spaces and parentheses; it ends at the
        # last ')'. Field 3 is the state, field 22 the start time in clock ticks after boot.
        fields = stat[stat.rindex(")") + 2 :].split()
        return fields[0], fields[19]
    # No /proc (macOS, BSD): ask ps, which has no dependency and is always there.
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        ["ps", "-o", "stat=", "-o", "lstart=", "-p", str(pid)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    line = result.stdout.strip()
    if result.returncode != 0 or not line:
        return None
    state, _, start = line.partition(" ")
    return state[:1], " ".join(start.split())


def _start_time(pid: int) -> str | None:
    probe = _probe(pid)
    if probe is None or probe[0] in ("Z", "X", "x"):
        return None
    return probe[1]


@functools.lru_cache(maxsize=4)
def _has_proc(proc: Path) -> bool:
    return proc.joinpath("self", "stat").exists()


def _boot_id() -> str | None:
    return _read_boot_id(BOOT_ID)


@functools.lru_cache(maxsize=4)
def _read_boot_id(path: Path) -> str | None:
    # Read once: a process that runs has not seen a reboot.
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _identity_matches(process: _Process) -> bool:
    """The recorded process is alive (not a zombie) and is the one that was launched."""
    if process.boot_id is not None and process.boot_id != _boot_id():
        return False
    return _start_time(process.pid) == process.start_time


def _reap_zombie(process: _Process) -> None:
    # The recorded process may be a child of this worker launched by another driver
    # instance; waiting for it lets its process group disappear. A zombie that is not our
    # child is reaped by its parent (init, once the worker that launched it is gone).
    probe = _probe(process.pid)
    if probe is not None and probe[0] == "Z" and probe[1] == process.start_time:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(process.pid, os.WNOHANG)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _kill_orphans(pgid: int) -> None:
    """Kill what a just-exited process left running in its group (a server it backgrounded).

    Only for a process seen exiting a moment ago: its group id cannot belong to anyone else
    while the group still has members. Returns once none of them is alive any more (SIGKILL
    is delivered asynchronously), or after KILL_WAIT_SECONDS.
    """
    if not _group_exists(pgid):
        return
    _signal_group(pgid, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + KILL_WAIT_SECONDS
    while _has_live_members(pgid):
        if loop.time() >= deadline:
            log.warning("process group %d still has live members after SIGKILL", pgid)
            return
        await asyncio.sleep(0.01)


def _has_live_members(pgid: int) -> bool:
    """Whether a process of group `pgid` is still alive; zombies, already dead, do not count."""
    if not _has_proc(PROC):
        return _group_exists(pgid)
    group = str(pgid)
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = entry.joinpath("stat").read_text()
        except OSError:
            continue
        # After the command name: state, parent pid, process group.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[2] == group and fields[0] not in "ZX":
            return True
    return False


def _unrecorded_leaders(root: Path) -> list[int]:
    """Live session leaders working in `root`: what `_spawn` starts there (its own session,
    `cwd=root`). Called under the workspace's lock when no recorded process is alive, so any
    found is a launch that never got to record it. None where there is no /proc."""
    if not _has_proc(PROC):
        return []
    target = str(root.resolve())
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = entry.joinpath("stat").read_text()
            # After the command name: state, parent pid, process group, session.
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[3] != entry.name or fields[0] in "ZX":
                continue
            if os.readlink(entry / "cwd") == target:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise ProvisionerError(f"not allowed to signal process group {pgid}: {exc}") from exc


async def _answers_http(port: int) -> bool:
    """Any HTTP response, even an error status, means the server is up.

    A bare socket on the event loop, not an HTTP client: loopback needs no TLS, proxies or
    pools, and a client's construction (an SSL context) costs more than the probe itself.
    Connected with connect_ex rather than the loop's sock_connect, which resolves the
    address first (uvloop: getaddrinfo, on a thread); a refused probe, what most are, is
    then a few syscalls and no wait.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        code = sock.connect_ex((HOST, port))
        if code == errno.EINPROGRESS:
            # On loopback a refusal is known at once; otherwise sending waits for the
            # connection and reports its failure.
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code != 0:
            return False
        loop = asyncio.get_running_loop()
        head = b""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                await loop.sock_sendall(sock, PROBE_REQUEST % (HOST.encode(), port))
                while len(head) < len(b"HTTP/"):
                    chunk = await loop.sock_recv(sock, 64)
                    if not chunk:
                        break
                    head += chunk
        except (OSError, TimeoutError):
            return False
        return head.startswith(b"HTTP/")


def _read_record(paths: _Paths) -> _Process | None:
    try:
        data = json.loads(paths.record.read_text())
    except (OSError, ValueError):
        return None
    return _Process.from_state(data) if isinstance(data, dict) else None


def _write_record(paths: _Paths, process: _Process) -> None:
    # Written into the launch marker, which the rename then turns into the record: one step
    # records the process and clears the marker, and no reader ever sees half a record.
    paths.launching.write_text(json.dumps(process.as_state()))
    paths.launching.replace(paths.record)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read()
    except FileNotFoundError:
        return b""


def _tail(path: Path, offset: int, lines: int) -> str:
    """The last `lines` lines written after `offset` (this run's output only)."""
    try:
        with path.open("rb") as file:
            end = file.seek(0, os.SEEK_END)
            file.seek(max(offset, end - TAIL_BYTES))
            chunk = file.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return "(no output)"
        raise
    text = chunk.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(text) or "(no output)"
