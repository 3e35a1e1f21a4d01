"""The local driver against real processes on loopback ports."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioners.conftest import ContextFactory, JobLog, workspace_ref
from spawnpoint.config import Settings
from spawnpoint.provisioners import local
from spawnpoint.provisioners.base import (
    PermanentProvisionerError,
    ProvisionContext,
    ProvisionerError,
    WorkspaceRef,
)
from spawnpoint.provisioners.local import LocalConfig, LocalProvisioner

SERVER = Path(__file__).with_name("workspace_server.py")
# The real thing, as a template would write it.
HTTP_SERVER = shlex.join(
    [
        sys.executable,
        *("-m", "http.server", "{port}"),
        *("--bind", "127.0.0.1"),
        *("--directory", "{workspace_dir}"),
    ]
)


def server_command(*flags: str) -> str:
    return shlex.join([sys.executable, str(SERVER), "--port", "{port}", *flags])


def config(settings: Settings, **values: Any) -> LocalConfig:
    values = {"ready_timeout_seconds": 10.0, "stop_grace_seconds": 2.0, **values}
    return LocalConfig(_env_file=None, data_dir=settings.data_dir, **values)


def workspace_dir(settings: Settings, workspace: WorkspaceRef) -> Path:
    return (settings.data_dir / "workspaces" / str(workspace.id)).resolve()


def processes_in(directory: Path) -> list[int]:
    """Live processes (not zombies) whose working directory is under `directory`."""
    prefix = str(directory.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if cwd.startswith(prefix) and stat[stat.rindex(")") + 2] not in "ZX":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


async def answers(url: str) -> bool:
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        try:
            await client.get(url)
        except httpx.TransportError:
            return False
    return True


@pytest.fixture(autouse=True)
def kill_leftovers(settings: Settings) -> Iterator[None]:
    """Whatever a failing test leaves running under its data dir dies with the test."""
    yield
    for pid in processes_in(settings.data_dir):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def driver(settings: Settings) -> AsyncIterator[LocalProvisioner]:
    async with LocalProvisioner(config(settings)) as provisioner:
        yield provisioner


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process whose pid a stale state might name."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


async def test_lifecycle_serves_http_only_while_running(
    driver: LocalProvisioner, make_ctx: ContextFactory, settings: Settings
) -> None:
    workspace = workspace_ref()
    ctx = make_ctx(workspace=workspace, spec={"command": HTTP_SERVER})
    root = workspace_dir(settings, workspace)

    provisioned = await driver.provision(ctx)
    assert provisioned.connection is not None
    port = provisioned.connection["port"]
    url = f"http://127.0.0.1:{port}/"
    assert provisioned.connection == {
        "url": url,
        "host": "127.0.0.1",
        "port": port,
        "protocol": "http",
    }
    assert await answers(url)
    assert provisioned.state["workspace_dir"] == str(root)
    status = await driver.status(ctx.with_state(provisioned.state))
    assert status.running
    assert status.connection == provisioned.connection

    stopped = await driver.stop(ctx.with_state(provisioned.state))
    assert stopped.connection is None
    assert stopped.state["running"] is False
    assert not await answers(url)
    assert not (await driver.status(ctx.with_state(stopped.state))).running
    assert not alive(provisioned.state["pid"])
    again = await driver.stop(ctx.with_state(stopped.state))
    assert again.state["port"] == port

    started = await driver.start(ctx.with_state(stopped.state))
    assert started.connection is not None
    assert started.connection["url"] == url, "the same port is reused when free"
    assert started.state["pid"] != provisioned.state["pid"]
    assert await answers(url)
    assert (await driver.status(ctx.with_state(started.state))).running

    await driver.destroy(ctx.with_state(started.state))
    assert not root.exists()
    assert not await answers(url)
    assert processes_in(root) == []
    await driver.destroy(ctx.with_state(started.state))
    assert not (await driver.status(ctx.with_state(started.state))).running


async def test_output_goes_to_the_job_log_and_the_env_is_minimal(
    driver: LocalProvisioner,
    make_ctx: ContextFactory,
    job_log: JobLog,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPAWNPOINT_TEST_SECRET", "must not leak")
    command = server_command("--say", "hello from the workspace", "--dump-env", "env.json")
    ctx = make_ctx(spec={"command": command, "env": {"GREETING": "hi", "PORT": "1"}})
    root = workspace_dir(settings, ctx.workspace)

    result = await driver.provision(ctx)

    assert "| hello from the workspace" in job_log.lines
    assert "hello from the workspace" in (root / ".spawnpoint" / "output.log").read_text()
    env = json.loads((root / "env.json").read_text())
    assert env["PORT"] == str(result.state["port"]), "the driver's PORT wins over the spec's"
    assert env["GREETING"] == "hi"
    assert env["HOME"] == str(root)
    # LC_CTYPE: Python itself may set it at start-up (PEP 538).
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "TZ", "LC_CTYPE", "HOME", "GREETING", "PORT"}
    await driver.destroy(ctx.with_state(result.state))


async def test_rerun_reuses_the_process_even_without_saved_state(
    driver: LocalProvisioner, make_ctx: ContextFactory, settings: Settings, job_log: JobLog
) -> None:
    ctx = make_ctx(spec={"command": HTTP_SERVER})
    root = workspace_dir(settings, ctx.workspace)
    first = await driver.provision(ctx)

    again = await driver.provision(ctx.with_state(first.state))
    assert again.state["pid"] == first.state["pid"]
    assert "reusing it" in job_log.text()

    # A new worker whose predecessor died before the state was saved.
    async with LocalProvisioner(config(settings)) as restarted:
        recovered = await restarted.provision(ctx)
    assert recovered.state["pid"] == first.state["pid"]
    assert recovered.connection == first.connection
    assert processes_in(root) == [first.state["pid"]]
    await driver.destroy(ctx.with_state(recovered.state))


async def test_concurrent_attempts_make_one_process(
    driver: LocalProvisioner, make_ctx: ContextFactory, settings: Settings
) -> None:
    ctx = make_ctx(spec={"command": HTTP_SERVER})
    one, two = await asyncio.gather(driver.provision(ctx), driver.provision(ctx))
    assert one.state["pid"] == two.state["pid"]
    assert processes_in(workspace_dir(settings, ctx.workspace)) == [one.state["pid"]]
    await driver.destroy(ctx.with_state(one.state))


async def test_a_dead_pid_in_the_state_starts_a_new_process(
    driver: LocalProvisioner, make_ctx: ContextFactory, settings: Settings, job_log: JobLog
) -> None:
    finished = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await finished.wait()
    dead_pid = finished.pid
    state = {"pid": dead_pid, "start_time": "1", "boot_id": None, "port": local._free_port(None)}
    ctx = make_ctx(spec={"command": HTTP_SERVER}, state=state)

    result = await driver.provision(ctx)

    assert result.state["pid"] != dead_pid
    assert f"process {dead_pid} is gone" in job_log.text()
    assert await answers(f"http://127.0.0.1:{result.state['port']}/")
    assert processes_in(workspace_dir(settings, ctx.workspace)) == [result.state["pid"]]
    await driver.destroy(ctx.with_state(result.state))


async def test_a_launch_that_never_recorded_its_process_leaves_one_process(
    driver: LocalProvisioner, make_ctx: ContextFactory, settings: Settings, job_log: JobLog
) -> None:
    """A worker killed between starting the process and writing its record: the next
    attempt finds no record, kills the unrecorded process and starts one of its own."""
    ctx = make_ctx(spec={"command": HTTP_SERVER})
    root = workspace_dir(settings, ctx.workspace)
    root.mkdir(parents=True)
    paths = local._Paths.of(settings.data_dir, ctx)
    port = local._free_port(None)
    argv = shlex.split(
        HTTP_SERVER.replace("{port}", str(port)).replace("{workspace_dir}", str(root))
    )
    unrecorded, _ = local._spawn(argv, dict(os.environ), paths, config(settings))
    assert processes_in(root) == [unrecorded.pid]

    result = await driver.provision(ctx)

    assert f"process {unrecorded.pid} was started but never recorded" in job_log.text()
    assert unrecorded.wait(timeout=5) == -signal.SIGKILL
    assert processes_in(root) == [result.state["pid"]] != [unrecorded.pid]
    assert not paths.launching.exists(), "a recorded launch leaves no marker to scan for"
    await driver.destroy(ctx.with_state(result.state))


async def test_stop_kills_a_process_a_launch_never_recorded(
    driver: LocalProvisioner, make_ctx: ContextFactory, settings: Settings, job_log: JobLog
) -> None:
    ctx = make_ctx(spec={"command": HTTP_SERVER})
    root = workspace_dir(settings, ctx.workspace)
    root.mkdir(parents=True)
    paths = local._Paths.of(settings.data_dir, ctx)
    argv = [sys.executable, "-m", "http.server", str(local._free_port(None))]
    unrecorded, _ = local._spawn(argv, dict(os.environ), paths, config(settings))
    assert paths.launching.exists()

    await driver.stop(ctx)

    assert unrecorded.wait(timeout=5) == -signal.SIGKILL
    assert f"process {unrecorded.pid} was started but never recorded" in job_log.text()
    assert processes_in(root) == []
    assert not paths.launching.exists()
    await driver.destroy(ctx)


async def test_a_reused_pid_is_neither_trusted_nor_signalled(
    driver: LocalProvisioner,
    make_ctx: ContextFactory,
    victim: subprocess.Popen[bytes],
) -> None:
    # The pid is alive, but it is not the process that was launched: the start time differs.
    stale = {"pid": victim.pid, "start_time": "0", "boot_id": None, "port": 9}

    status = await driver.status(make_ctx(state=stale))
    assert not status.running
    stopped = await driver.stop(make_ctx(state=stale))
    assert stopped.connection is None
    await driver.destroy(make_ctx(state=stale))

    ctx = make_ctx(spec={"command": HTTP_SERVER}, state=stale)
    result = await driver.provision(ctx)
    assert result.state["pid"] != victim.pid
    await driver.stop(ctx.with_state(result.state))
    assert victim.poll() is None, "the unrelated process must survive"


async def test_stop_escalates_to_sigkill(
    make_ctx: ContextFactory, settings: Settings, job_log: JobLog
) -> None:
    grace = 0.3
    ctx = make_ctx(spec={"command": server_command("--ignore-sigterm")})
    async with LocalProvisioner(config(settings, stop_grace_seconds=grace)) as driver:
        result = await driver.provision(ctx)
        pid = result.state["pid"]
        loop = asyncio.get_running_loop()
        began = loop.time()
        await driver.stop(ctx.with_state(result.state))
        elapsed = loop.time() - began
        assert not alive(pid)
        assert elapsed >= grace
        assert "sending SIGKILL" in job_log.text()
        await driver.destroy(ctx)


async def test_a_command_that_exits_at_once_reports_its_output(
    driver: LocalProvisioner, make_ctx: ContextFactory, settings: Settings
) -> None:
    command = server_command("--say", "bad configuration: no key", "--exit-with", "3")
    ctx = make_ctx(spec={"command": command})
    with pytest.raises(ProvisionerError) as caught:
        await driver.provision(ctx)
    assert not isinstance(caught.value, PermanentProvisionerError)
    assert "bad configuration: no key" in str(caught.value)
    assert "status 3" in str(caught.value)
    assert not (await driver.status(ctx)).running
    assert processes_in(workspace_dir(settings, ctx.workspace)) == []
    await driver.destroy(ctx)


async def test_a_command_that_backgrounds_its_server_leaves_nothing_behind(
    driver: LocalProvisioner, make_ctx: ContextFactory, settings: Settings
) -> None:
    # The shell exits at once; the server it put in the background must not outlive it.
    script = f"{server_command('--no-listen')} & echo detached; exit 4"
    ctx = make_ctx(spec={"command": shlex.join(["/bin/sh", "-c", script])})
    with pytest.raises(ProvisionerError, match="detached"):
        await driver.provision(ctx)
    assert processes_in(workspace_dir(settings, ctx.workspace)) == []
    await driver.destroy(ctx)


async def test_a_process_that_never_answers_is_stopped_and_reported(
    make_ctx: ContextFactory, settings: Settings
) -> None:
    ctx = make_ctx(spec={"command": server_command("--say", "warming up", "--no-listen")})
    async with LocalProvisioner(config(settings, ready_timeout_seconds=0.5)) as driver:
        with pytest.raises(ProvisionerError, match="nothing answered HTTP") as caught:
            await driver.provision(ctx)
        assert "warming up" in str(caught.value)
        assert processes_in(workspace_dir(settings, ctx.workspace)) == []
        await driver.destroy(ctx)


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (None, "needs the template's `command`"),
        ("   ", "needs the template's `command`"),
        ("python3 'unbalanced", "cannot be parsed"),
        ("/nonexistent/spawnpoint-test-binary --port {port}", "cannot run"),
    ],
)
async def test_unrunnable_commands_fail_permanently(
    driver: LocalProvisioner, make_ctx: ContextFactory, command: str | None, reason: str
) -> None:
    ctx = make_ctx(spec={"command": command})
    with pytest.raises(PermanentProvisionerError, match=reason):
        await driver.provision(ctx)
    await driver.destroy(ctx)


async def test_nothing_provisioned_is_harmless(
    driver: LocalProvisioner, make_ctx: ContextFactory
) -> None:
    ctx = make_ctx(spec={"command": HTTP_SERVER})
    assert (await driver.status(ctx)).detail == "stopped"
    assert (await driver.stop(ctx)).connection is None
    await driver.destroy(ctx)


async def test_without_proc_the_start_time_comes_from_ps(
    driver: LocalProvisioner, make_ctx: ContextFactory, tmp_path: Path
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local, "PROC", tmp_path / "no-proc")
        patch.setattr(local, "BOOT_ID", tmp_path / "no-proc" / "boot_id")
        assert local._probe(os.getpid()) is not None
        ctx: ProvisionContext = make_ctx(spec={"command": HTTP_SERVER})
        result = await driver.provision(ctx)
        assert result.state["boot_id"] is None
        assert (await driver.status(ctx.with_state(result.state))).running
        await driver.stop(ctx.with_state(result.state))
        assert not (await driver.status(ctx.with_state(result.state))).running
        await driver.destroy(ctx)


@pytest.fixture
async def serve_bytes() -> AsyncIterator[Any]:
    """Start loopback TCP servers that answer every connection with fixed bytes (or never)."""
    servers: list[asyncio.Server] = []
    done = asyncio.Event()

    async def start(reply: bytes | None) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if reply is None:
                await done.wait()
            else:
                writer.write(reply)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    done.set()
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_any_http_response_means_up_and_nothing_else_does(
    serve_bytes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = await serve_bytes(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    assert await local._answers_http(error), "an error status still means the server is up"
    assert await local._answers_http(await serve_bytes(b"HTTP/1.0 200 OK\r\n\r\nok"))
    assert not await local._answers_http(await serve_bytes(b"SSH-2.0-OpenSSH_9.6\r\n"))
    assert not await local._answers_http(await serve_bytes(b""))
    assert not await local._answers_http(local._free_port(None))
    monkeypatch.setattr(local, "PROBE_TIMEOUT_SECONDS", 0.2)
    silent = await serve_bytes(None)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert not await local._answers_http(silent)
    assert loop.time() - began < 2, "a server that never answers is given up on"


def test_a_port_given_to_a_starting_launch_is_not_given_again() -> None:
    port = local._free_port(None)
    assert local._free_port(port) == port, "the preferred port, when free"
    assert local._free_port(port, taken={port}) != port
