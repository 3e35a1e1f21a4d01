"""Settings: the seed's names and defaults, and refusals of unsafe production values."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from spawnpoint.app import create_app
from spawnpoint.config import Settings, UnsafeSettingsError

STRONG = "s" * 32


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
    ],
    ids=["dev-bypass", "missing-secret", "short-secret", "31-bytes"],
)
def test_production_refuses_unsafe_settings(values: dict[str, object], named: str) -> None:
    unsafe = settings(environment="production", **values)
    with pytest.raises(UnsafeSettingsError, match=named):
        create_app(unsafe)


def test_production_accepts_safe_settings() -> None:
    safe = settings(environment="production", jwt_secret=STRONG, dev_bypass_token="")
    assert safe.unsafe_reasons() == []
    assert not safe.dev_bypass_active
    create_app(safe)


def test_development_generates_a_local_secret_once(tmp_path: Path) -> None:
    first = settings(data_dir=tmp_path).signing_secret
    second = settings(data_dir=tmp_path).signing_secret
    assert first
    assert first == second
    assert (tmp_path / ".jwt-secret").stat().st_mode & 0o077 == 0


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
