"""Settings: the seed's names and defaults, and refusals of unsafe production values."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import AUDIT_SIGNING_KEY
from spawnpoint.app import create_app
from spawnpoint.config import Settings, UnsafeSettingsError, is_loopback

STRONG = "s" * 32
PG = "postgresql+psycopg://spawn_service:spawn_service@localhost:5432/spawn_service"
SPAWNPOINT = str(Path(sys.executable).with_name("spawnpoint"))


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_seed_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("JWT_", "OPA_", "ORCHESTRATOR_", "DEMO_", "DEV_", "CONSOLE_")):
            monkeypatch.delenv(name)
    defaults = settings()
    assert defaults.orchestrator_url == "http://orchestrator:8080"
    assert defaults.orchestrator_scenarios_path == "/api/scenarios"
    assert defaults.console_base_url == "https://mvp.local/console"
    assert defaults.opa_url == "http://opa:8181"
    assert defaults.opa_policy_path == "/v1/data/spawn/allow"
    assert defaults.jwt_algorithm == "HS256"
    assert defaults.jwt_audience is None
    assert defaults.jwt_issuer is None
    assert defaults.dev_bypass_token == "DEV-LOCAL-TOKEN"
    assert defaults.demo_tenant_id == uuid.UUID("00000000-0000-0000-0000-000000000001")
    assert defaults.demo_plan_id == uuid.UUID("00000000-0000-0000-0000-000000000010")
    assert defaults.demo_template_id == uuid.UUID("00000000-0000-0000-0000-000000000100")
    assert defaults.environment == "development"
    assert defaults.policy_engine == "embedded"
    assert defaults.provisioner == "local"
    assert defaults.data_dir == Path("data")


def test_environment_variables_and_dotenv_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("OPA_URL=http://policy:9000\nPORT=9999\n")
    monkeypatch.setenv("CONSOLE_BASE_URL", "https://console.example.test")
    loaded = Settings()
    assert loaded.opa_url == "http://policy:9000"
    assert loaded.port == 9999
    assert loaded.console_base_url == "https://console.example.test"


def test_database_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    url = settings(data_dir=tmp_path).sqlalchemy_url
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'spawnpoint.db'}"
    assert settings(database_url="postgresql://u@h/db").sqlalchemy_url == (
        "postgresql+psycopg://u@h/db"
    )


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"jwt_secret": STRONG, "dev_bypass_token": "letmein"}, "DEV_BYPASS_TOKEN"),
        ({}, "JWT_SECRET"),
        ({"jwt_secret": "short"}, "JWT_SECRET"),
        ({"jwt_secret": "s" * 31, "dev_bypass_token": ""}, "JWT_SECRET"),
        ({"jwt_secret": STRONG, "dev_bypass_token": "", "database_url": None}, "DATABASE_URL"),
        ({"jwt_secret": STRONG, "dev_bypass_token": ""}, "AUDIT_SIGNING_KEY"),
    ],
    ids=[
        "dev-bypass",
        "missing-secret",
        "short-secret",
        "31-bytes",
        "missing-database-url",
        "missing-audit-key",
    ],
)
def test_production_refuses_unsafe_settings(values: dict[str, object], named: str) -> None:
    unsafe = settings(environment="production", **{"database_url": PG, **values})
    with pytest.raises(UnsafeSettingsError, match=named):
        create_app(unsafe)
    assert len([r for r in unsafe.unsafe_reasons() if named in r]) == 1


def test_development_falls_back_to_sqlite_without_complaint() -> None:
    assert settings(environment="development", database_url=None).unsafe_reasons() == []


def test_production_accepts_safe_settings() -> None:
    safe = settings(
        environment="production",
        jwt_secret=STRONG,
        dev_bypass_token="",
        database_url=PG,
        audit_signing_key=AUDIT_SIGNING_KEY,
    )
    assert safe.unsafe_reasons() == []
    assert not safe.dev_bypass_active
    create_app(safe)


def test_development_generates_a_local_secret_once(tmp_path: Path) -> None:
    first = settings(data_dir=tmp_path).signing_secret
    second = settings(data_dir=tmp_path).signing_secret
    assert first
    assert first == second
    assert (tmp_path / ".jwt-secret").stat().st_mode & 0o077 == 0


def _read_secret(data_dir: Path, secret: str, starting: Any, out: Any) -> None:
    configured = settings(data_dir=data_dir)
    starting.wait()
    out.put(getattr(configured, secret))


@pytest.mark.parametrize("secret", ["signing_secret", "audit_key_material"])
def test_processes_starting_at_once_share_one_generated_secret(tmp_path: Path, secret: str) -> None:
    """An API and its workers start together in development: every one must get the same
    JWT secret and audit key, never a half-written file or a secret another overwrote."""
    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        data_dir = tmp_path / str(attempt)
        starting, out = context.Barrier(8), context.Queue()
        processes = [
            context.Process(target=_read_secret, args=(data_dir, secret, starting, out))
            for _ in range(8)
        ]
        for process in processes:
            process.start()
        values = {out.get(timeout=30) for _ in processes}
        for process in processes:
            process.join(timeout=30)
        assert len(values) == 1
        assert "" not in values
        assert [p.name for p in data_dir.iterdir()] == [  # no candidate file left behind
            ".jwt-secret" if secret == "signing_secret" else ".audit-signing-key"
        ]


@pytest.mark.parametrize("command", [["serve"], ["migrate"]])
def test_cli_refuses_to_start_with_one_clear_line(tmp_path: Path, command: list[str]) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "ENVIRONMENT": "production",
        "JWT_SECRET": "too-short",
        "DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "spawnpoint", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "JWT_SECRET" in lines[0]
    assert "DATABASE_URL" in lines[0]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),  # noqa: S104  (the point of the test)
        ("::", False),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("localhost.example.com", False),
        ("myhost", False),
        ("", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_dev_bypass_is_refused_on_a_network_address() -> None:
    with pytest.raises(UnsafeSettingsError, match="ALLOW_DEV_BYPASS_ON_NETWORK") as refused:
        settings(environment="development").check_bind_host("0.0.0.0")  # noqa: S104
    assert "'0.0.0.0'" in str(refused.value)
    assert "\n" not in str(refused.value)
    settings(environment="development").check_bind_host("127.0.0.1")
    settings(environment="development").check_bind_host("localhost")


@pytest.mark.parametrize(
    "values",
    [
        {"environment": "development", "allow_dev_bypass_on_network": True},
        {"environment": "development", "dev_bypass_token": ""},
        {"environment": "production", "jwt_secret": STRONG, "database_url": PG},
    ],
    ids=["allowed", "bypass-disabled", "production"],
)
def test_network_addresses_are_fine_without_an_active_bypass_or_when_allowed(
    values: dict[str, object],
) -> None:
    settings(**values).check_bind_host("0.0.0.0")  # noqa: S104


def test_the_bypass_warning_names_only_the_public_token() -> None:
    default = settings(dev_bypass_token="DEV-LOCAL-TOKEN").dev_bypass_warning
    assert "DEV-LOCAL-TOKEN" in default
    assert "DEV_BYPASS_TOKEN=" in default
    custom = settings(dev_bypass_token="a-private-value").dev_bypass_warning
    assert "a-private-value" not in custom


@pytest.mark.parametrize(
    ("values", "available"),
    [
        ({"environment": "development"}, True),
        ({"environment": "development", "docs_enabled": False}, False),
        ({"environment": "production"}, False),
        ({"environment": "production", "docs_enabled": True}, True),
    ],
)
def test_docs_are_on_in_development_and_off_in_production_by_default(
    values: dict[str, object], available: bool
) -> None:
    assert settings(**values).docs_available is available


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))  # noqa: S104
        port: int = probe.getsockname()[1]
        return port


def _serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "DATA_DIR": str(tmp_path), **extra}


def test_serve_refuses_the_dev_bypass_on_a_network_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [SPAWNPOINT, "serve", "--host", "0.0.0.0", "--port", str(_free_port())],  # noqa: S104
        env=_serve_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,  # a server that starts instead of refusing fails here
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spawnpoint: refusing to start:")
    assert "ALLOW_DEV_BYPASS_ON_NETWORK" in lines[0]
    assert not (tmp_path / "spawnpoint.db").exists()  # refused before migrating


def test_serve_on_a_network_address_when_allowed_warns_about_the_bypass(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [SPAWNPOINT, "serve", "--host", "0.0.0.0", "--port", str(port), "--no-worker"],  # noqa: S104
            env=_serve_env(tmp_path, ALLOW_DEV_BYPASS_ON_NETWORK="true"),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(timeout=30)
    output = log.read_text()
    assert "dev bypass token is active: anyone with DEV-LOCAL-TOKEN is an operator" in output
