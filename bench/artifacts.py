"""Artifact content benchmark: a 200 MB upload and download through `spawnpoint serve`
against a plain file copy on the same disk, and the server's peak memory meanwhile.

    .venv/bin/python bench/artifacts.py [--size-mb 200] [--rounds 5] [--database sqlite|postgres]

What it does, all on 127.0.0.1:

1. writes SIZE MB of random bytes to a work directory, and times a plain copy of it on the
   same filesystem as the server's DATA_DIR (checked: same device), `shutil.copyfile`,
   and the same copy followed by `fsync`, as the server makes an upload durable before its
   row commits (the upload's like-for-like baseline): best of ROUNDS each; and, for where
   the time goes, the same file sent over a loopback TCP connection to a reader that
   discards it (what this client can push through the socket with no server work at all);
2. starts `spawnpoint serve` (one uvicorn process, uvloop + httptools, the in-process worker
   off) with DATA_DIR in that work directory: the embedded SQLite default, or with
   `--database postgres` a scratch PostgreSQL database (SPAWNPOINT_BENCH_PG_URL, else
   SPAWNPOINT_TEST_PG_URL, else postgresql://postgres@127.0.0.1:5432/postgres), dropped after;
3. each round uploads the file as `multipart/form-data` (POST /api/artifacts, a `file` part,
   with a Content-Length; the file's bytes sent with `socket.sendfile`, so this client
   takes next to no CPU from the two cores the server runs on) and downloads it again
   (GET /api/artifacts/{id}/download, read in 1 MiB blocks), timing each from the first
   byte sent to the last byte received; the best round counts, after one warm-up round
   (reported, not counted: a fresh server's first request sets things up once);
4. checks the upload's recorded size and SHA-256 against the file's, and one more download
   (untimed) byte for byte by SHA-256;
5. samples the server's resident memory (VmRSS) every 20 ms during the transfers, and
   reads its peak (VmHWM) at the end: content streams, so the peak must stay flat, far
   below the file's size;
6. prints a Markdown table (MB/s, ratio to the copy, peak RSS, machine load) and writes it
   to bench/results/artifacts.md.

Goals: upload and download each at least 0.5 of the copy's throughput; server peak RSS
under 200 MB. Exit status: 0 when both are met, 1 when not, 2 on error.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    LOCALHOST,
    Server,
    clean_env,
    free_port,
    markdown_table,
    median,
    migrated_deployment,
    process_cpu_seconds,
    raise_on_sigterm,
    server_process,
    system_cpu_seconds,
    venv_command,
    write_result,
)

MB = 1024 * 1024
BLOCK = MB
DEV_TOKEN = "DEV-LOCAL-TOKEN"  # the development bypass token, public by design
JWT_SECRET = "bench-artifacts-" + "s" * 40
BOUNDARY = "spawnpoint-bench-boundary"
RATIO_GOAL = 0.5
RSS_GOAL_MB = 200.0
WATCHDOG_SECONDS = 900


@dataclass
class RssSampler:
    """VmRSS of one process every `every` seconds, on a thread, between start and stop."""

    pid: int
    every: float = 0.02
    peak_kb: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS: resident now; VmHWM: the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def timed_copy(source: Path, target: Path, *, durable: bool) -> float:
    """Seconds to copy `source` to `target` (and, `durable`, to fsync the copy)."""
    target.unlink(missing_ok=True)
    started = time.perf_counter()
    shutil.copyfile(source, target)
    if durable:
        descriptor = os.open(target, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def timed_loopback(source: Path) -> float:
    """Seconds to send `source` over a loopback TCP connection to a reader that discards it:
    the ceiling of any HTTP upload of the file from this client, server work aside."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOCALHOST, 0))
    listener.listen(1)
    done = threading.Event()

    def discard() -> None:
        connection, _ = listener.accept()
        buffer = bytearray(BLOCK)
        with connection:
            while connection.recv_into(buffer):
                pass
        done.set()

    reader = threading.Thread(target=discard, daemon=True)
    reader.start()
    try:
        with socket.create_connection(listener.getsockname()) as sender, source.open("rb") as file:
            started = time.perf_counter()
            sender.sendfile(file)  # as the upload sends it
            sender.shutdown(socket.SHUT_WR)
            done.wait(timeout=300)
            return time.perf_counter() - started
    finally:
        listener.close()


def multipart_parts(path: Path, name: str) -> tuple[bytes, bytes]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="type"\r\n\r\nbench\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head, f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(server: Server, path: Path, name: str) -> tuple[float, dict[str, object]]:
    """POST the file as multipart; (seconds, the created record).

    The request head and the part headers go with `sendall`, the file's bytes with
    `socket.sendfile` (the kernel copies them from the page cache to the socket), so the
    client spends almost no CPU of the two cores the server runs on, as a client on another
    machine would; the response is read with `http.client`.
    """
    head, tail = multipart_parts(path, name)
    length = len(head) + path.stat().st_size + len(tail)
    request = (
        "POST /api/artifacts HTTP/1.1\r\n"
        f"Host: {LOCALHOST}:{server.port}\r\n"
        f"Authorization: Bearer {DEV_TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((LOCALHOST, server.port), timeout=300) as sock:
        started = time.perf_counter()
        sock.sendall(request + head)
        with path.open("rb") as file:
            sock.sendfile(file)
        sock.sendall(tail)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        elapsed = time.perf_counter() - started
    if response.status != 201:
        raise RuntimeError(f"upload answered {response.status}: {body[:500]!r}")
    record: dict[str, object] = json.loads(body)
    return elapsed, record


def download(server: Server, artifact_id: str, *, verify: bool = False) -> tuple[float, int, str]:
    """GET the content; (seconds, bytes, SHA-256 when `verify` else "")."""
    connection = http.client.HTTPConnection(LOCALHOST, server.port, timeout=300)
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    received = 0
    try:
        started = time.perf_counter()
        connection.request(
            "GET",
            f"/api/artifacts/{artifact_id}/download",
            headers={"Authorization": f"Bearer {DEV_TOKEN}"},
        )
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"download answered {response.status}: {response.read()[:500]!r}")
        while count := response.readinto(buffer):
            received += count
            if verify:
                digest.update(view[:count])
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    return elapsed, received, digest.hexdigest() if verify else ""


def delete(server: Server, artifact_id: str) -> None:
    connection = http.client.HTTPConnection(LOCALHOST, server.port, timeout=60)
    try:
        connection.request(
            "DELETE",
            f"/api/artifacts/{artifact_id}",
            headers={"Authorization": f"Bearer {DEV_TOKEN}"},
        )
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    if response.status != 204:
        raise RuntimeError(f"delete answered {response.status}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="artifact size (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--result-name", default="artifacts.md", help="file in bench/results/")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    raise_on_sigterm(deadline=WATCHDOG_SECONDS)
    spawnpoint = venv_command("spawnpoint")
    size = args.size_mb * MB
    with contextlib.ExitStack() as stack:
        if args.database == "postgres":
            deployment = migrated_deployment(
                stack, "artifacts", spawnpoint, jwt_secret=JWT_SECRET, pool_size=5
            )
            workdir, env = deployment.workdir, deployment.env
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-art-")))
            env = clean_env(
                ENVIRONMENT="development",
                JWT_SECRET=JWT_SECRET,
                LOG_LEVEL="warning",
                DATA_DIR=str(workdir / "data"),
                HOST=LOCALHOST,
            )
        env["ARTIFACT_MAX_BYTES"] = str(size + MB)
        data_dir = Path(env["DATA_DIR"])
        data_dir.mkdir(parents=True, exist_ok=True)
        if data_dir.stat().st_dev != workdir.stat().st_dev:
            raise RuntimeError(f"{data_dir} is not on the disk the copies are timed on")
        source = workdir / "source.bin"
        with source.open("wb") as file:
            for _ in range(args.size_mb):
                file.write(os.urandom(MB))
        digest = sha256_of(source)
        target = workdir / "data-copy.bin"
        copy_seconds = min(timed_copy(source, target, durable=False) for _ in range(args.rounds))
        synced_seconds = min(timed_copy(source, target, durable=True) for _ in range(args.rounds))
        loopback_seconds = min(timed_loopback(source) for _ in range(args.rounds))
        print(
            f"loopback send: {size / MB / loopback_seconds:,.0f} MB/s; "
            f"plain copy: {size / MB / copy_seconds:,.0f} MB/s, with fsync "
            f"{size / MB / synced_seconds:,.0f} MB/s (best of {args.rounds})"
        )

        port = free_port()
        server = stack.enter_context(
            server_process(
                "spawnpoint",
                [*spawnpoint, "serve", "--no-worker", "--host", LOCALHOST, "--port", str(port)],
                env={**env, "PORT": str(port)},
                port=port,
                cwd=workdir,
                ready_path="/health",
                timeout=60,
            )
        )
        pid = server.process.pid
        idle_rss_kb = status_kb(pid, "VmRSS")
        uploads: list[float] = []
        downloads: list[float] = []
        upload_cpu: list[float] = []
        download_cpu: list[float] = []
        busy0, total0 = system_cpu_seconds()
        with RssSampler(pid) as sampler:
            # A fresh server's first upload pays for what it sets up once (FastAPI's first
            # call of each route, the allocator's heap growing to its working size): one
            # warm-up round, reported but not counted.
            cpu = process_cpu_seconds(pid)
            warm_seconds, record = upload(server, source, "bench-warm-up.bin")
            warm_cpu = process_cpu_seconds(pid) - cpu
            download(server, str(record["id"]))
            delete(server, str(record["id"]))
            print(
                f"warm-up: upload {size / MB / warm_seconds:,.0f} MB/s, server CPU "
                f"{warm_cpu:.2f} s",
                flush=True,
            )
            last_id = ""
            for round_no in range(args.rounds):
                cpu = process_cpu_seconds(pid)
                seconds, record = upload(server, source, f"bench-{round_no}.bin")
                upload_cpu.append(process_cpu_seconds(pid) - cpu)
                if record["size"] != size or record["sha256"] != digest:
                    raise RuntimeError(f"the server recorded {record}, not {size} bytes {digest}")
                uploads.append(seconds)
                artifact_id = str(record["id"])
                cpu = process_cpu_seconds(pid)
                seconds, received, _ = download(server, artifact_id)
                download_cpu.append(process_cpu_seconds(pid) - cpu)
                if received != size:
                    raise RuntimeError(f"downloaded {received} bytes of {size}")
                downloads.append(seconds)
                if last_id:
                    delete(server, last_id)
                last_id = artifact_id
                print(
                    f"round {round_no + 1}: upload {size / MB / uploads[-1]:,.0f} MB/s, "
                    f"download {size / MB / downloads[-1]:,.0f} MB/s, server CPU "
                    f"{upload_cpu[-1]:.2f} s / {download_cpu[-1]:.2f} s, "
                    f"server RSS peak so far {sampler.peak_kb / 1024:,.0f} MB",
                    flush=True,
                )
            _, _, downloaded_digest = download(server, last_id, verify=True)
        busy1, total1 = system_cpu_seconds()
        if downloaded_digest != digest:
            raise RuntimeError("the downloaded content differs from the uploaded file")
        peak_kb = status_kb(pid, "VmHWM")
        if server.process.poll() is not None:
            raise RuntimeError(f"the server died:\n{server.log_tail()}")

    copy_rate = size / MB / copy_seconds
    synced_rate = size / MB / synced_seconds
    loopback_rate = size / MB / loopback_seconds
    up_rate = size / MB / min(uploads)
    down_rate = size / MB / min(downloads)
    load = (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan")
    load_avg = os.getloadavg()[0]
    rows = [
        [
            "plain file copy (copyfile)",
            f"{copy_rate:,.0f}",
            "1.00",
            f"{copy_rate / synced_rate:.2f}",
        ],
        [
            "durable copy (copyfile + fsync)",
            f"{synced_rate:,.0f}",
            f"{synced_rate / copy_rate:.2f}",
            "1.00",
        ],
        [
            "upload (multipart POST, fsync before commit)",
            f"{up_rate:,.0f}",
            f"{up_rate / copy_rate:.2f}",
            f"{up_rate / synced_rate:.2f}",
        ],
        [
            "download (GET .../download)",
            f"{down_rate:,.0f}",
            f"{down_rate / copy_rate:.2f}",
            f"{down_rate / synced_rate:.2f}",
        ],
        [
            "loopback TCP send to a discarding reader (the transfer ceiling)",
            f"{loopback_rate:,.0f}",
            f"{loopback_rate / copy_rate:.2f}",
            f"{loopback_rate / synced_rate:.2f}",
        ],
    ]
    peak_mb = peak_kb / 1024
    text = "\n".join(
        [
            f"# Artifact content: {args.size_mb} MB through `spawnpoint serve` ({args.database})",
            "",
            markdown_table(
                ["transfer", "MB/s (best round)", "ratio to copy", "ratio to durable copy"], rows
            ),
            "",
            markdown_table(
                ["server memory", "MB"],
                [
                    ["RSS before the transfers", f"{idle_rss_kb / 1024:,.0f}"],
                    ["RSS peak, sampled every 20 ms during them", f"{sampler.peak_kb / 1024:,.0f}"],
                    ["peak RSS of the process (VmHWM)", f"{peak_mb:,.0f}"],
                ],
            ),
            "",
            f"Server CPU per transfer (median): upload {median(upload_cpu):.2f} s, download "
            f"{median(download_cpu):.2f} s, for {args.size_mb} MB.",
            f"Rounds: {args.rounds}, after one warm-up round (upload "
            f"{size / MB / warm_seconds:,.0f} MB/s, server CPU {warm_cpu:.2f} s: not counted); "
            "each uploads the file, downloads it, and deletes the previous round's artifact; "
            "the last download is checked by SHA-256.",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{load_avg:.2f} at the end, CPU busy {load:.0%} during the transfers.",
            f"Goals: at least {RATIO_GOAL} of the copy like for like (the upload, which fsyncs "
            "its content before the row commits, against the durable copy; the download "
            f"against the plain copy); peak RSS under {RSS_GOAL_MB:.0f} MB.",
        ]
    )
    print(text)
    path = write_result(args.result_name, text + "\n")
    print(f"written to {path}")
    met = (
        up_rate / synced_rate >= RATIO_GOAL
        and down_rate / copy_rate >= RATIO_GOAL
        and peak_mb < RSS_GOAL_MB
    )
    return 0 if met else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
