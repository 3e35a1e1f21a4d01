"""The provisioner contract: the public API for workspace drivers, built-in and third-party.

A driver turns a workspace's template spec into running infrastructure. The job handlers
call it; it never touches the database. Everything a driver needs to remember about a
workspace (a process id, a remote id) goes into `ProvisionResult.state`, which the caller
saves on the workspace and hands back, unchanged, as `ProvisionContext.state` on the next
call — the same way JupyterHub spawners save and restore their state.

Writing a driver:

    class MyCloudConfig(ProvisionerConfig):
        model_config = SettingsConfigDict(env_prefix="MYCLOUD_")
        region: str = Field("eu-west-1", description="Region new workspaces run in.")


    class MyCloudProvisioner(Provisioner[MyCloudConfig]):
        name = "my-cloud"
        config_model = MyCloudConfig

        async def provision(self, ctx: ProvisionContext) -> ProvisionResult: ...
        async def start(self, ctx: ProvisionContext) -> ProvisionResult: ...
        async def stop(self, ctx: ProvisionContext) -> ProvisionResult: ...
        async def destroy(self, ctx: ProvisionContext) -> None: ...
        async def status(self, ctx: ProvisionContext) -> WorkspaceStatus: ...

and register it in the distribution's `pyproject.toml`:

    [project.entry-points."spawnpoint.provisioners"]
    my-cloud = "my_package.driver:MyCloudProvisioner"

Rules every driver follows:

- Every operation may run again after a worker died half-way through it (the job is
  retried with the same `idempotency_key`). Look up what an earlier attempt made — by
  deterministic names, by the recorded state, or by passing the idempotency key to a remote
  API — before creating anything, so a re-run never makes a second one.
- Raise `ProvisionerError` for failures that may pass (timeouts, 5xx, a crashed process)
  and `PermanentProvisionerError` for those that will not (a bad template, a 4xx).
- Hold no mutable state shared between workspaces: one driver instance serves every
  workspace of a worker, concurrently.
- Keep `state` JSON-serialisable: it is stored as JSON.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar
from uuid import UUID

from pydantic_settings import BaseSettings, SettingsConfigDict

from spawnpoint.config import Settings

ENTRY_POINT_GROUP = "spawnpoint.provisioners"
REQUIRED_METHODS = ("provision", "start", "stop", "destroy", "status")
# The same shape templates accept for their `provisioner` field.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

LogSink = Callable[[str], Awaitable[None]]
"""Appends one line to the job's log."""


class ProvisionerError(Exception):
    """An operation failed in a way that may pass: the job should be retried.

    Args:
        message: What went wrong, for the job log and the workspace's error.
        state: Driver state worth saving even though the operation failed (for example the
            remote id of a scenario that failed to start, so `destroy` can clean it up).
            `None` leaves the saved state as it was.
    """

    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, state: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.state = state


class PermanentProvisionerError(ProvisionerError):
    """An operation failed in a way a retry cannot fix: a bad template, a 4xx, a missing
    command. The job fails at once."""

    retryable = False


class UnknownProvisionerError(PermanentProvisionerError, LookupError):
    """No driver with this name is registered."""


class ProvisionerDefinitionError(TypeError):
    """A driver class breaks the contract; raised when the class is defined or registered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkspaceRef:
    """The workspace an operation is for."""

    id: UUID
    tenant_id: UUID
    name: str
    template_id: UUID
    template_version: int


@dataclass(frozen=True, kw_only=True)
class ProvisionContext:
    """Everything one driver call may use.

    Attributes:
        workspace: The workspace being worked on.
        spec: The template version's spec as JSON (see `TemplateSpec`).
        state: The driver's own state as last saved on the workspace; empty at first.
        idempotency_key: Identical on every attempt of one job (the job id). Pass it on to
            remote APIs that create things, so a retried call finds the first one.
        log: Appends a line to the job log.
        settings: The process settings.
    """

    workspace: WorkspaceRef
    spec: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str
    log: LogSink
    settings: Settings

    def with_state(self, state: dict[str, Any]) -> ProvisionContext:
        """Return a copy carrying `state`, for chaining operations within one job."""
        return dataclasses.replace(self, state=state)


def _check_json(state: dict[str, Any]) -> None:
    # Fail inside the driver that produced the value rather than later, in the database
    # layer, where the error would not say which driver was at fault.
    try:
        json.dumps(state)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"provisioner state must be JSON-serialisable: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class ProvisionResult:
    """The outcome of `provision`, `start` or `stop`.

    Attributes:
        state: The driver state to save on the workspace. It replaces the saved state.
        connection: How to reach the workspace: at least `url` (which may be `None`), plus
            `host`, `port` and `protocol` where they apply. `None` when not reachable
            (after `stop`).
    """

    state: dict[str, Any]
    connection: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_json(self.state)


@dataclass(frozen=True, kw_only=True)
class WorkspaceStatus:
    """What the infrastructure says about a workspace right now.

    Attributes:
        running: The workspace is up.
        connection: As in `ProvisionResult`; `None` when not running.
        detail: A short human-readable explanation ("running (pid 4242)", "stopped").
    """

    running: bool
    connection: dict[str, Any] | None = None
    detail: str = ""


class ProvisionerConfig(BaseSettings):
    """Typed configuration of one driver.

    Subclasses declare their fields (each with a description) and an `env_prefix`, so
    operators can set them from the environment or `.env`; values that already live in
    `Settings` are copied from there by `from_settings`.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build the configuration for a process running with `settings`.

        Args:
            settings: The process settings.

        Returns:
            The configuration; fields not taken from `settings` come from the environment
            or their defaults.

        Raises:
            pydantic.ValidationError: A value is invalid.
        """
        del settings  # The base configuration has no fields; subclasses copy theirs.
        return cls()


ConfigT = TypeVar("ConfigT", bound=ProvisionerConfig)


class Provisioner(ABC, Generic[ConfigT]):
    """A workspace driver.

    Class attributes:
        name: The short name templates use (`[a-z][a-z0-9-]*`, at most 63 characters); the
            same as the entry-point name.
        config_model: The `ProvisionerConfig` subclass the driver is configured with.
        runs_host_commands: The driver runs template-supplied commands on the worker's host,
            so only operators may create templates that use it.
        instant: The driver's calls touch nothing outside the process and return at once
            (`dry-run`): a job then runs its call inside the transaction that records the
            outcome, one commit instead of two, since there is no work outside whose start
            must be durable first. Not inherited: a subclass that overrides a call may do
            real work, so it declares `instant = True` itself if it means it.

    A subclass that does not set `name` or leaves a method abstract is refused when it is
    defined, with `ProvisionerDefinitionError`. Intermediate base classes opt out with
    `class Base(Provisioner[C], abstract=True)`.

    Instances are created once per worker (`from_settings` or `ProvisionerRegistry.create`),
    used for every workspace, and closed with `aclose` (or `async with`).
    """

    name: ClassVar[str]
    config_model: ClassVar[type[ProvisionerConfig]] = ProvisionerConfig
    runs_host_commands: ClassVar[bool] = False
    instant: ClassVar[bool] = False
    _declared_abstract: ClassVar[bool] = True

    def __init__(self, config: ConfigT) -> None:
        if not isinstance(config, self.config_model):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_model.__name__}, "
                f"not a {type(config).__name__}"
            )
        self.config: ConfigT = config

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Set on every class, so a subclass of an abstract base is not abstract by heredity.
        cls._declared_abstract = abstract
        cls.instant = bool(cls.__dict__.get("instant", False))
        if not abstract:
            _check_driver_class(cls)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Create the driver configured for a process running with `settings`.

        Args:
            settings: The process settings.

        Returns:
            A ready driver.

        Raises:
            pydantic.ValidationError: The driver's configuration is invalid.
        """
        return cls(cls.config_model.from_settings(settings))  # type: ignore[arg-type]

    @abstractmethod
    async def provision(self, ctx: ProvisionContext) -> ProvisionResult:
        """Create the workspace's infrastructure and start it; return once it is reachable.

        Idempotent: a re-run (same `ctx.idempotency_key`, possibly with the state of an
        earlier, interrupted attempt or none at all) finds what an earlier attempt made and
        finishes it, never making a second one.

        Args:
            ctx: The workspace, its spec and the saved state.

        Returns:
            The state to save and the connection information.

        Raises:
            PermanentProvisionerError: The spec cannot be provisioned by this driver.
            ProvisionerError: Anything else; the job is retried.
        """

    @abstractmethod
    async def start(self, ctx: ProvisionContext) -> ProvisionResult:
        """Start a stopped workspace; return once it is reachable.

        Starting a running workspace returns its current connection.

        Args:
            ctx: The workspace, its spec and the state saved by `provision` or `stop`.

        Returns:
            The state to save and the connection information.

        Raises:
            PermanentProvisionerError: The workspace cannot be started by this driver.
            ProvisionerError: Anything else; the job is retried.
        """

    @abstractmethod
    async def stop(self, ctx: ProvisionContext) -> ProvisionResult:
        """Stop a workspace, keeping what `start` needs to bring it back.

        Stopping a stopped (or never started) workspace is harmless and succeeds.

        Args:
            ctx: The workspace, its spec and the saved state.

        Returns:
            The state to save; `connection` is `None`.

        Raises:
            ProvisionerError: The workspace may still be running; the job is retried.
        """

    @abstractmethod
    async def destroy(self, ctx: ProvisionContext) -> None:
        """Remove everything the workspace has; afterwards the caller discards the state.

        Idempotent: destroying what is already gone succeeds.

        Args:
            ctx: The workspace, its spec and the saved state.

        Raises:
            ProvisionerError: Something may be left behind; the job is retried.
        """

    @abstractmethod
    async def status(self, ctx: ProvisionContext) -> WorkspaceStatus:
        """Report what the infrastructure says about the workspace; change nothing.

        Args:
            ctx: The workspace, its spec and the saved state.

        Returns:
            Whether it runs and how to reach it.

        Raises:
            ProvisionerError: The infrastructure could not be asked.
        """

    async def aclose(self) -> None:
        """Release what the driver holds (connections); it is not used afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


AnyProvisioner = Provisioner[Any]


def _check_driver_class(cls: type[AnyProvisioner]) -> None:
    problems: list[str] = []
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        problems.append(
            f"`name` must be a short lowercase name such as 'my-cloud' "
            f"(letters, digits and '-', starting with a letter), not {name!r}"
        )
    config_model = getattr(cls, "config_model", None)
    if not (isinstance(config_model, type) and issubclass(config_model, ProvisionerConfig)):
        problems.append("`config_model` must be a subclass of ProvisionerConfig")
    for method_name in REQUIRED_METHODS:
        method = getattr(cls, method_name)
        if getattr(method, "__isabstractmethod__", False):
            problems.append(f"`{method_name}` is not implemented")
        elif not inspect.iscoroutinefunction(method):
            problems.append(f"`{method_name}` must be a coroutine function (`async def`)")
    if problems:
        raise ProvisionerDefinitionError(
            f"provisioner {cls.__module__}.{cls.__qualname__} breaks the contract: "
            + "; ".join(problems)
        )


class ProvisionerRegistry:
    """The drivers a process knows, by name.

    Each registry is its own object: the application builds one at start-up
    (`from_entry_points()`), tests build their own and `add` fakes to it.

    Args:
        drivers: Driver classes to register.

    Raises:
        ProvisionerDefinitionError: Two drivers share a name, or a class is not a driver.
    """

    def __init__(self, drivers: Iterable[type[AnyProvisioner]] = ()) -> None:
        self._drivers: dict[str, type[AnyProvisioner]] = {}
        for driver in drivers:
            self.add(driver)

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> Self:
        """Load every driver registered in the entry-point group `group`.

        Drivers are imported here, at start-up, so a broken one stops the process with a
        message naming it rather than failing the first job that uses it.

        Args:
            group: The entry-point group; the default is the one drivers register in.

        Returns:
            A registry of the installed drivers.

        Raises:
            ProvisionerDefinitionError: A driver cannot be imported, is not a `Provisioner`,
                its `name` differs from its entry-point name, or two share a name.
        """
        registry = cls()
        for entry_point in entry_points(group=group):
            driver = _load(entry_point)
            if driver.name != entry_point.name:
                raise ProvisionerDefinitionError(
                    f"entry point {entry_point.name!r} ({entry_point.value}) loads a driver "
                    f"named {driver.name!r}; the names must match"
                )
            registry.add(driver)
        return registry

    def add(self, driver: type[AnyProvisioner], *, replace: bool = False) -> None:
        """Register `driver` under its `name`.

        Args:
            driver: A concrete `Provisioner` subclass.
            replace: Allow replacing a driver already registered under that name.

        Raises:
            ProvisionerDefinitionError: `driver` is not a concrete `Provisioner`, or its name
                is taken and `replace` is false.
        """
        if not (isinstance(driver, type) and issubclass(driver, Provisioner)):
            raise ProvisionerDefinitionError(f"{driver!r} is not a Provisioner subclass")
        if driver._declared_abstract or inspect.isabstract(driver):
            raise ProvisionerDefinitionError(f"{driver.__qualname__} is abstract")
        existing = self._drivers.get(driver.name)
        if existing is not None and existing is not driver and not replace:
            raise ProvisionerDefinitionError(
                f"two provisioners are named {driver.name!r}: "
                f"{_qualified(existing)} and {_qualified(driver)}"
            )
        self._drivers[driver.name] = driver

    def names(self) -> tuple[str, ...]:
        """Return the registered names, sorted."""
        return tuple(sorted(self._drivers))

    def __contains__(self, name: object) -> bool:
        return name in self._drivers

    def get(self, name: str) -> type[AnyProvisioner]:
        """Return the driver class registered as `name`.

        Raises:
            UnknownProvisionerError: No driver has that name.
        """
        try:
            return self._drivers[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownProvisionerError(
                f"no provisioner is named {name!r}; installed: {known}"
            ) from None

    def create(self, name: str, settings: Settings) -> AnyProvisioner:
        """Create a driver instance configured from `settings`.

        Args:
            name: The driver's name.
            settings: The process settings.

        Returns:
            A new driver; the caller closes it with `aclose`.

        Raises:
            UnknownProvisionerError: No driver has that name.
            pydantic.ValidationError: The driver's configuration is invalid.
        """
        return self.get(name).from_settings(settings)


def _qualified(driver: type[object]) -> str:
    return f"{driver.__module__}.{driver.__qualname__}"


def _load(entry_point: EntryPoint) -> type[AnyProvisioner]:
    origin = f"entry point {entry_point.name!r} = {entry_point.value!r}"
    if entry_point.dist is not None:
        origin += f" of {entry_point.dist.name}"
    try:
        loaded = entry_point.load()
    except ProvisionerDefinitionError as exc:
        raise ProvisionerDefinitionError(f"{origin}: {exc}") from exc
    except Exception as exc:
        raise ProvisionerDefinitionError(f"{origin} cannot be imported: {exc!r}") from exc
    if not (isinstance(loaded, type) and issubclass(loaded, Provisioner)):
        raise ProvisionerDefinitionError(f"{origin} is not a Provisioner subclass")
    return loaded
