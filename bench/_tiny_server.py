"""The workspace of bench/vs_jupyterhub.py: the smallest HTTP server that answers every request.

Standard library only (it runs as `python -I -S _tiny_server.py`, so it starts in a few ms).
It answers each request on 127.0.0.1 with 200 "ok" and closes the connection. The port is
the first one found of: `--port N` / `--port=N`; the environment's PORT (spawnpoint's `local`
driver sets it); the port of JUPYTERHUB_SERVICE_URL (JupyterHub's spawners set it since 2.0).
SIGTERM and SIGINT (how spawnpoint and JupyterHub stop a local process) end it at once.
"""

import os
import signal
import socket
import sys
from types import FrameType

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
    b"Connection: close\r\n\r\nok\n"
)
MAX_HEAD_BYTES = 65536


def port_from(argv: list[str], env: dict[str, str]) -> int:
    for n, arg in enumerate(argv):
        if arg == "--port" and n + 1 < len(argv):
            return int(argv[n + 1])
        if arg.startswith("--port="):
            return int(arg.partition("=")[2])
    if env.get("PORT"):
        return int(env["PORT"])
    service_url = env.get("JUPYTERHUB_SERVICE_URL", "")
    # http://127.0.0.1:PORT/user/NAME/ -> PORT
    netloc = service_url.partition("://")[2].partition("/")[0]
    if ":" in netloc:
        return int(netloc.rpartition(":")[2])
    raise SystemExit("_tiny_server.py: no port (--port, PORT or JUPYTERHUB_SERVICE_URL)")


def _exit(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    port = port_from(sys.argv[1:], dict(os.environ))
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(128)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(2.0)
            head = b""
            try:
                while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                conn.sendall(RESPONSE)
            except OSError:
                continue


if __name__ == "__main__":
    main()
