"""The driver contract: subclass checks, the registry, configuration and result values."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from spawnpoint.config import Settings
from spawnpoint.provisioners import base
from spawnpoint.provisioners.base import (
    ENTRY_POINT_GROUP,
    PermanentProvisionerError,
    ProvisionContext,
    Provisioner,
    ProvisionerConfig,
    ProvisionerDefinitionError,
    ProvisionerError,
    ProvisionerRegistry,
    ProvisionResult,
    UnknownProvisionerError,
    WorkspaceStatus,
)
from spawnpoint.provisioners.dry_run import DryRunProvisioner
from spawnpoint.provisioners.local import LocalConfig, LocalProvisioner
from spawnpoint.provisioners.orchestrator import OrchestratorConfig, OrchestratorProvisioner

BUILTIN = {"dry-run": DryRunProvisioner, "local": LocalProvisioner}


class Complete(Provisioner[ProvisionerConfig], abstract=True):
    """Every method implemented; test classes below remove or break one."""

    async def provision(self, ctx: ProvisionContext) -> ProvisionResult:
        return ProvisionResult(state={})

    async def start(self, ctx: ProvisionContext) -> ProvisionResult:
        return ProvisionResult(state={})

    async def stop(self, ctx: ProvisionContext) -> ProvisionResult:
        return ProvisionResult(state={})

    async def destroy(self, ctx: ProvisionContext) -> None:
        return None

    async def status(self, ctx: ProvisionContext) -> WorkspaceStatus:
        return WorkspaceStatus(running=False)


class Minimal(Complete):
    name = "minimal"


def test_the_entry_points_register_the_builtin_drivers() -> None:
    registry = ProvisionerRegistry.from_entry_points()
    assert registry.names() == ("dry-run", "local", "orchestrator")
    assert registry.get("orchestrator") is OrchestratorProvisioner
    assert [name for name in registry.names() if registry.get(name).runs_host_commands] == ["local"]


async def test_create_configures_a_driver_from_settings(settings: Settings) -> None:
    registry = ProvisionerRegistry.from_entry_points()
    local = registry.create("local", settings)
    assert isinstance(local, LocalProvisioner)
    assert local.config.data_dir == settings.data_dir
    async with registry.create("orchestrator", settings) as orchestrator:
        assert isinstance(orchestrator, OrchestratorProvisioner)
        assert orchestrator.config.collection_url == "http://orchestrator:8080/api/scenarios"


def test_an_unknown_name_lists_the_installed_ones(settings: Settings) -> None:
    registry = ProvisionerRegistry([DryRunProvisioner])
    with pytest.raises(UnknownProvisionerError, match=r"'kubernetes'.*installed: dry-run"):
        registry.create("kubernetes", settings)
    assert "kubernetes" not in registry
    assert not UnknownProvisionerError("x").retryable


def test_a_driver_missing_a_method_fails_when_defined() -> None:
    with pytest.raises(ProvisionerDefinitionError, match="`stop` is not implemented"):

        class NoStop(Provisioner[ProvisionerConfig]):
            name = "no-stop"

            async def provision(self, ctx: ProvisionContext) -> ProvisionResult:
                raise NotImplementedError

            async def start(self, ctx: ProvisionContext) -> ProvisionResult:
                raise NotImplementedError

            async def destroy(self, ctx: ProvisionContext) -> None:
                raise NotImplementedError

            async def status(self, ctx: ProvisionContext) -> WorkspaceStatus:
                raise NotImplementedError


def test_a_driver_without_a_name_fails_when_defined() -> None:
    with pytest.raises(ProvisionerDefinitionError, match="`name` must be"):

        class Nameless(Complete):
            pass


@pytest.mark.parametrize("name", ["", "Local", "my_driver", "-x", "x" * 64])
def test_a_driver_with_a_bad_name_fails_when_defined(name: str) -> None:
    with pytest.raises(ProvisionerDefinitionError, match="`name` must be"):
        type("Bad", (Complete,), {"name": name})


def test_a_synchronous_method_fails_when_defined() -> None:
    def status(self: Any, ctx: ProvisionContext) -> WorkspaceStatus:
        return WorkspaceStatus(running=False)

    with pytest.raises(ProvisionerDefinitionError, match="`status` must be a coroutine"):
        type("Sync", (Complete,), {"name": "sync", "status": status})


def test_a_config_model_must_be_a_provisioner_config() -> None:
    with pytest.raises(ProvisionerDefinitionError, match="`config_model`"):
        type("Untyped", (Complete,), {"name": "untyped", "config_model": dict})


def test_a_driver_refuses_another_drivers_config() -> None:
    with pytest.raises(TypeError, match="needs a LocalConfig"):
        LocalProvisioner(ProvisionerConfig())  # type: ignore[arg-type]


def test_two_drivers_may_not_share_a_name() -> None:
    registry = ProvisionerRegistry([Minimal])
    registry.add(Minimal)
    impostor = type("Impostor", (Complete,), {"name": "minimal"})
    with pytest.raises(ProvisionerDefinitionError, match="two provisioners are named 'minimal'"):
        registry.add(impostor)
    registry.add(impostor, replace=True)
    assert registry.get("minimal") is impostor


def test_only_concrete_drivers_can_be_added() -> None:
    registry = ProvisionerRegistry()
    with pytest.raises(ProvisionerDefinitionError, match="abstract"):
        registry.add(Complete)
    with pytest.raises(ProvisionerDefinitionError, match="not a Provisioner"):
        registry.add(dict)  # type: ignore[arg-type]


def entry_points_of(*points: EntryPoint) -> Any:
    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        return [point for point in points if point.group == group]

    return fake_entry_points


def test_an_entry_point_must_name_its_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint("other-name", f"{__name__}:Minimal", ENTRY_POINT_GROUP)
    monkeypatch.setattr(base, "entry_points", entry_points_of(point))
    with pytest.raises(ProvisionerDefinitionError, match="the names must match"):
        ProvisionerRegistry.from_entry_points()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("spawnpoint_no_such_package.driver:Driver", "cannot be imported"),
        (f"{__name__}:BUILTIN", "not a Provisioner subclass"),
    ],
)
def test_a_broken_entry_point_names_itself(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    point = EntryPoint("broken", value, ENTRY_POINT_GROUP)
    monkeypatch.setattr(base, "entry_points", entry_points_of(point))
    with pytest.raises(ProvisionerDefinitionError, match=f"'broken'.*{message}"):
        ProvisionerRegistry.from_entry_points()


def test_results_must_be_json() -> None:
    with pytest.raises(TypeError, match="JSON-serialisable"):
        ProvisionResult(state={"path": Path("/tmp")})


def test_errors_say_whether_to_retry() -> None:
    retryable = ProvisionerError("timeout", state={"id": "a"})
    assert retryable.retryable
    assert retryable.state == {"id": "a"}
    assert not PermanentProvisionerError("bad template").retryable
    assert PermanentProvisionerError("bad template").state is None


def test_driver_configs_come_from_settings_and_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LOCAL_STOP_GRACE_SECONDS", "2.5")
    monkeypatch.setenv("ORCHESTRATOR_MAX_ATTEMPTS", "7")
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        orchestrator_url="https://orch.example.test/",
        orchestrator_scenarios_path="/v2/scenarios/",
    )
    local = LocalConfig.from_settings(settings)
    assert (local.data_dir, local.stop_grace_seconds, local.ready_timeout_seconds) == (
        tmp_path,
        2.5,
        30.0,
    )
    orchestrator = OrchestratorConfig.from_settings(settings)
    assert orchestrator.collection_url == "https://orch.example.test/v2/scenarios"
    assert orchestrator.max_attempts == 7
