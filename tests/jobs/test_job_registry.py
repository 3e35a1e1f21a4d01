"""Handler registration: decorator, duplicates, `module:function` and entry points."""

from __future__ import annotations

from pathlib import Path

import job_test_handlers
import pytest

from conftest import make_settings
from spawnpoint.config import Settings
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.registry import HandlerRegistry, default_registry


async def _handler(ctx: JobContext) -> None:
    return None


def test_register_directly_and_as_decorator() -> None:
    registry = HandlerRegistry()
    registry.register("a", _handler)

    @registry.register("b")
    async def b(ctx: JobContext) -> None:
        return None

    assert registry.get("a") is _handler
    assert registry.get("b") is b
    assert registry.job_types() == {"a", "b"}
    assert registry.get("c") is None


def test_a_job_type_has_one_handler() -> None:
    registry = HandlerRegistry()
    registry.register("a", _handler)
    with pytest.raises(ValueError, match="already has a handler"):
        registry.register("a", _handler)


def test_load_reference() -> None:
    registry = HandlerRegistry()
    registry.load_reference("job_test_handlers:register")
    assert registry.get(job_test_handlers.CRASH_ONCE) is job_test_handlers.crash_once
    with pytest.raises(ValueError, match="module:function"):
        registry.load_reference("job_test_handlers")


def settings(data_dir: Path) -> Settings:
    return make_settings(f"sqlite+aiosqlite:///{data_dir / 'unused.db'}", data_dir)


def _install_plugin(site: Path, entry_point: str) -> None:
    """A minimal installed distribution declaring one `spawnpoint.jobs` entry point."""
    dist_info = site / "acme_jobs-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-jobs\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[spawnpoint.jobs]\nacme = {entry_point}\n")


def test_default_registry_has_noop_and_entry_point_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path, "job_test_handlers:register")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = default_registry(settings(tmp_path))
    assert {"noop", job_test_handlers.CRASH_ONCE, job_test_handlers.ECHO} <= registry.job_types()


def test_a_broken_plugin_stops_the_worker_from_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path, "job_test_handlers:no_such_function")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="plug-in 'acme'"):
        default_registry(settings(tmp_path))
