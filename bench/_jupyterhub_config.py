"""JupyterHub's configuration for bench/vs_jupyterhub.py (`jupyterhub -f` this file).

Everything that differs per run comes from BENCH_JH_* environment variables set by the
benchmark; the rest is JupyterHub's default (sqlite, configurable-http-proxy started by the
hub, tornado, the default spawn limits), with logging at WARN as for spawnpoint.

- BENCH_JH_SPAWNER=noop: `NoopSpawner` below; its start() returns the URL of one shared tiny
  HTTP server (BENCH_JH_NOOP_URL), which the hub still waits for and routes in the proxy.
- BENCH_JH_SPAWNER=local: JupyterHub's own SimpleLocalProcessSpawner running
  BENCH_JH_CMD (a JSON argv) in BENCH_JH_HOME/<user>.
"""

import json
import os

from jupyterhub.spawner import Spawner


class NoopSpawner(Spawner):  # type: ignore[misc]
    """Starts nothing: the server is the shared one at BENCH_JH_NOOP_URL."""

    _bench_running = False

    async def start(self) -> str:
        self._bench_running = True
        return os.environ["BENCH_JH_NOOP_URL"]

    async def poll(self) -> int | None:
        return None if self._bench_running else 0

    async def stop(self, now: bool = False) -> None:
        self._bench_running = False


env = os.environ
c = get_config()  # type: ignore[name-defined]  # noqa: F821 (JupyterHub defines it)

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(env["BENCH_JH_PORT"])
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(env["BENCH_JH_HUB_PORT"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env['BENCH_JH_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.command = [env["BENCH_JH_CHP"]]
c.ConfigurableHTTPProxy.pid_file = os.path.join(env["BENCH_JH_DIR"], "proxy.pid")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(env["BENCH_JH_DIR"], "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(env["BENCH_JH_DIR"], "cookie_secret")
c.JupyterHub.pid_file = os.path.join(env["BENCH_JH_DIR"], "jupyterhub.pid")
c.JupyterHub.log_level = "WARN"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.services = [{"name": "bench", "api_token": env["BENCH_JH_TOKEN"]}]
c.JupyterHub.load_roles = [
    {"name": "bench-admin", "scopes": ["admin:users", "admin:servers"], "services": ["bench"]}
]
if env["BENCH_JH_SPAWNER"] == "noop":
    c.JupyterHub.spawner_class = NoopSpawner
else:
    c.JupyterHub.spawner_class = "simple"
    c.Spawner.cmd = json.loads(env["BENCH_JH_CMD"])
    c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(env["BENCH_JH_HOME"], "{username}")
