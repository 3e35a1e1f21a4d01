"""`spawnpoint audit ...`, and the README's stand-alone check run on a real export."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

from audit_support import append, chain, draft, edit, key
from typer.testing import CliRunner, Result

from spawnpoint.cli import app
from spawnpoint.config import Settings
from spawnpoint.db import Database

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_script(tmp_path: Path) -> Path:
    """The README's stand-alone export check, exactly as documented."""
    section = README.read_text().split("### Exporting, and verifying an export on your own")[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    script = tmp_path / "verify_export.py"
    script.write_text(match.group(1))
    return script


async def cli(settings: Settings, *args: str) -> Result:
    """Run the CLI on the test database (in a thread: it runs its own event loop)."""
    env = {
        "DATABASE_URL": settings.sqlalchemy_url,
        "DATA_DIR": str(settings.data_dir),
        "JWT_SECRET": settings.jwt_secret or "",
        "ENVIRONMENT": "development",
        # The tests' key, configured or generated under DATA_DIR: the CLI must sign alike.
        "AUDIT_SIGNING_KEY": settings.audit_key_material or "",
    }
    return await asyncio.to_thread(CliRunner().invoke, app, ["audit", *args], env=env)


def check_export(
    tmp_path: Path, export: Path, settings: Settings
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(readme_script(tmp_path)), str(export), key(settings).public_base64],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


async def test_verify_exits_1_when_a_chain_is_invalid(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 4)
    valid = await cli(backend_settings, "verify", "--tenant", str(tenant_id))
    assert valid.exit_code == 0, valid.output
    assert json.loads(valid.output) == {
        "valid": True,
        "checked": 4,
        "first_invalid_seq": None,
        "reason": None,
    }
    await edit(database, tenant_id, 2, actor_id="someone else")
    invalid = await cli(backend_settings, "verify", "--tenant", str(tenant_id))
    assert invalid.exit_code == 1
    assert json.loads(invalid.output)["first_invalid_seq"] == 2
    every = await cli(backend_settings, "verify")
    assert every.exit_code == 1
    lines = [json.loads(line) for line in every.output.splitlines()]
    assert {"tenant_id": str(tenant_id)}.items() <= next(
        line for line in lines if line["tenant_id"] == str(tenant_id)
    ).items()
    assert (await cli(backend_settings, "verify", "--tenant", "nope")).exit_code == 2


async def test_checkpoint_then_export_checks_out_with_the_readme_script(
    database: Database, backend_settings: Settings, tmp_path: Path
) -> None:
    tenant_id = await chain(database, 5)
    signed = await cli(backend_settings, "checkpoint")
    assert signed.exit_code == 0, signed.output
    assert re.match(r"\d+ checkpoints signed", signed.output)
    await append(database, [draft(tenant_id, 7, details={"nested": {"b": 1.5, "a": [True, None]}})])
    exported = await cli(backend_settings, "export", "--tenant", str(tenant_id))
    assert exported.exit_code == 0, exported.output
    lines = [line for line in exported.stdout.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    # Entry 6 came after the checkpoint: the export signed a new one to cover it.
    assert [r["type"] for r in records] == ["entry"] * 6 + ["checkpoint"]
    assert records[-1]["seq"] == 6
    export = tmp_path / "audit.jsonl"
    export.write_text("\n".join(lines) + "\n")
    checked = check_export(tmp_path, export, backend_settings)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("valid: entries 1 to 6")

    records[2]["reason"] = "rewritten"
    export.write_text("".join(json.dumps(r) + "\n" for r in records))
    tampered = check_export(tmp_path, export, backend_settings)
    assert tampered.returncode == 1
    assert "entry 3 was altered" in tampered.stderr
    records[2]["reason"] = "unspecified"
    records[-1]["seq"] = 5
    export.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert "signature" in check_export(tmp_path, export, backend_settings).stderr


async def test_export_of_a_time_range_ends_at_the_covering_checkpoint(
    database: Database, backend_settings: Settings, tmp_path: Path
) -> None:
    tenant_id = await chain(database, 3)
    await cli(backend_settings, "checkpoint")
    await append(database, [draft(tenant_id, 4)])
    async with database.transaction(write=False) as session:
        from sqlalchemy import select

        from spawnpoint.models import AuditEntry

        times = list(
            (
                await session.execute(
                    select(AuditEntry.time)
                    .where(AuditEntry.chain_id == tenant_id)
                    .order_by(AuditEntry.seq)
                )
            ).scalars()
        )
    exported = await cli(
        backend_settings,
        "export",
        "--tenant",
        str(tenant_id),
        "--since",
        times[1].isoformat(),
        "--until",
        times[2].isoformat(),
    )
    assert exported.exit_code == 0, exported.output
    records = [json.loads(line) for line in exported.stdout.splitlines() if line.startswith("{")]
    assert [(r["type"], r["seq"]) for r in records] == [
        ("entry", 2),
        ("entry", 3),
        ("checkpoint", 3),
    ]
    export = tmp_path / "range.jsonl"
    export.write_text(exported.stdout)
    assert check_export(tmp_path, export, backend_settings).returncode == 0
    empty = await cli(backend_settings, "export", "--tenant", str(uuid.uuid4()))
    assert (empty.exit_code, empty.stdout.strip()) == (0, "")


async def test_partitions_and_archive_commands_succeed(
    backend: str, backend_settings: Settings
) -> None:
    created = await cli(backend_settings, "partitions", "--ahead", "4")
    assert created.exit_code == 0, created.output
    if backend == "postgres":
        assert len(created.output.split()) == 5
        assert all(name.startswith("audit_log_") for name in created.output.split())
    else:
        assert "not PostgreSQL" in created.output
    archived = await cli(backend_settings, "archive")
    assert archived.exit_code == 0, archived.output
    assert archived.output.startswith("0 entries of 0 months archived")
