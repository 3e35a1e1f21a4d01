"""The `orchestrator` driver: workspaces as scenarios of a remote orchestrator service.

This is the Spawn Service seed's orchestrator call grown into a full lifecycle. The base URL
is `ORCHESTRATOR_URL` + `ORCHESTRATOR_SCENARIOS_PATH` (default
`http://orchestrator:8080/api/scenarios`), written `{base}` below.

## Orchestrator contract

All bodies are JSON (`Content-Type: application/json`); every request carries
`Accept: application/json`.

**Scenario** — the object every successful response (except 204) returns:

| field | type | meaning |
| --- | --- | --- |
| `id` | string (a number is accepted) | the orchestrator's id; `scenario_id` is accepted instead |
| `status` | string | one of the statuses below |
| `url` | string, optional | where users reach the scenario once `running` |
| `connection` | object, optional | `url`, `host`, `port`, `protocol`, …; wins over `url` |
| `error` | string, optional | why the scenario is `failed` |

Statuses: `pending`, `starting`, `running`, `stopping`, `stopped`, `failed`, `deleting`,
`deleted`. Any other status is treated as "still in progress".

**Create** — `POST {base}`

- Headers: `Idempotency-Key: <job id>` — identical on every retry of one spawn job.
- Body: `{"workspace_id": "<uuid>", "tenant_id": "<uuid>", "name": "<workspace name>",
  "template_id": "<uuid>", "template_version": <int>, "spec": {<template spec>}}`
- `201 Created`, `202 Accepted` or `200 OK` with a Scenario. A request repeating an
  Idempotency-Key already seen MUST return the scenario created the first time (200), not
  create another.

**Read** — `GET {base}/{id}` → `200` with a Scenario; `404` when it does not exist (any more).

**Stop** — `POST {base}/{id}/stop`, no body → `200` or `202` with a Scenario. Stopping a
stopped scenario succeeds. `404`: the scenario is gone, which counts as stopped.

**Start** — `POST {base}/{id}/start`, no body → `200` or `202` with a Scenario. Starting a
running scenario succeeds.

**Delete** — `DELETE {base}/{id}` → `200`, `202` (deletion continues; the scenario answers
`deleting`, then `deleted` or `404`) or `204`. `404`: already gone, which is success.

**How spawnpoint calls it**

- After create and start it polls `GET {base}/{id}` until `running` (the connection is taken
  from `connection`, else `url`) or `failed` (the job fails with the scenario's `error`, as
  a retryable error; the scenario id is kept so the workspace can still be deleted). After
  stop it polls until `stopped` (`failed` or `404` also count as stopped); after a `202`
  delete, until `deleted` or `404` (`failed` there fails the job, which retries the
  DELETE). Polling gives up after `ORCHESTRATOR_READY_TIMEOUT_SECONDS` (provision, start)
  or `ORCHESTRATOR_STOP_TIMEOUT_SECONDS` (stop, delete).
- The scenario id is saved with the workspace. A retried provision that has it reads the
  scenario instead of creating again (and starts it if it is `stopped`); one that lost it
  repeats the create with the same Idempotency-Key. Provision or start of a scenario that
  answers `404` creates a new one, and a retried provision deletes a `failed` scenario
  (waiting until it is gone) and creates a new one: the replacement's Idempotency-Key is
  `<job id>:after:<old scenario id>`, so retries of the replacement make one scenario.
- Every request has a timeout (`ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS`,
  `ORCHESTRATOR_CONNECT_TIMEOUT_SECONDS`). Connection errors, timeouts, `5xx`, `408` and
  `429` are retried up to `ORCHESTRATOR_MAX_ATTEMPTS` times in all, with exponential backoff
  and jitter (a `Retry-After` in seconds is honoured, within the backoff cap); then the job
  fails and is retried later. Any other `4xx`, or a success response without a Scenario,
  fails the job for good.
- The connection always includes `scenario_id` and `console_url`, `CONSOLE_BASE_URL/<id>`
  as the seed built its access links; the latter is also the `url` when the orchestrator
  reports none.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from spawnpoint.config import Settings
from spawnpoint.provisioners.base import (
    PermanentProvisionerError,
    ProvisionContext,
    Provisioner,
    ProvisionerConfig,
    ProvisionerError,
    ProvisionResult,
    WorkspaceStatus,
)

RUNNING = "running"
STOPPED = "stopped"
FAILED = "failed"
DELETED = "deleted"
RETRYABLE_STATUS = frozenset({408, 429})
ERROR_EXCERPT = 500


class OrchestratorConfig(ProvisionerConfig):
    """Configuration of the `orchestrator` driver; environment variables start with
    `ORCHESTRATOR_`."""

    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_")

    url: str = Field(
        "http://orchestrator:8080", description="Base URL of the orchestrator (ORCHESTRATOR_URL)."
    )
    scenarios_path: str = Field(
        "/api/scenarios",
        description="Path of the scenarios collection (ORCHESTRATOR_SCENARIOS_PATH).",
    )
    console_base_url: str = Field(
        "https://mvp.local/console",
        description="Base of the scenario access links (CONSOLE_BASE_URL).",
    )
    request_timeout_seconds: float = Field(
        10.0, gt=0, description="Longest wait for any one request to be answered."
    )
    connect_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest wait for a connection to the orchestrator."
    )
    max_attempts: int = Field(
        4, ge=1, le=20, description="Attempts per request, counting the first, before failing."
    )
    backoff_seconds: float = Field(
        0.5, ge=0, description="Wait before the first retry; doubles with each further one."
    )
    backoff_max_seconds: float = Field(10.0, ge=0, description="Cap on the wait between retries.")
    poll_interval_seconds: float = Field(
        2.0, gt=0, description="Longest wait between two status checks while polling."
    )
    ready_timeout_seconds: float = Field(
        600.0, gt=0, description="How long a scenario has to reach `running`."
    )
    stop_timeout_seconds: float = Field(
        300.0, gt=0, description="How long a scenario has to reach `stopped` or be deleted."
    )
    trust_env: bool = Field(
        True, description="Honour HTTP(S)_PROXY, NO_PROXY and SSL_CERT_FILE from the environment."
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> OrchestratorConfig:
        return cls(
            url=settings.orchestrator_url,
            scenarios_path=settings.orchestrator_scenarios_path,
            console_base_url=settings.console_base_url,
        )

    @property
    def collection_url(self) -> str:
        return self.url.rstrip("/") + "/" + self.scenarios_path.strip("/")


@dataclass(frozen=True, slots=True)
class Scenario:
    """The orchestrator's view of one scenario."""

    id: str
    status: str
    url: str | None
    connection: dict[str, Any] | None
    error: str | None

    @classmethod
    def parse(cls, response: httpx.Response) -> Scenario:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise PermanentProvisionerError(
                f"the orchestrator answered {response.request.method} {response.request.url} "
                f"with {response.status_code} but no scenario object: {_excerpt(response)}"
            )
        raw_id = body.get("id", body.get("scenario_id"))
        status = body.get("status")
        if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or not str(raw_id):
            raise PermanentProvisionerError(f"the orchestrator's scenario has no id: {body!r}")
        if not isinstance(status, str):
            raise PermanentProvisionerError(f"the orchestrator's scenario has no status: {body!r}")
        url, connection, error = body.get("url"), body.get("connection"), body.get("error")
        return cls(
            id=str(raw_id),
            status=status.lower(),
            url=url if isinstance(url, str) and url else None,
            connection=connection if isinstance(connection, dict) else None,
            error=str(error) if error else None,
        )


class OrchestratorProvisioner(Provisioner[OrchestratorConfig]):
    """Drives scenarios through the orchestrator contract in the module docstring."""

    name = "orchestrator"
    config_model = OrchestratorConfig

    def __init__(self, config: OrchestratorConfig) -> None:
        super().__init__(config)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                config.request_timeout_seconds, connect=config.connect_timeout_seconds
            ),
            headers={"Accept": "application/json", "User-Agent": "spawnpoint"},
            trust_env=config.trust_env,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def provision(self, ctx: ProvisionContext) -> ProvisionResult:
        scenario: Scenario | None = None
        key = ctx.idempotency_key
        recorded = _scenario_id(ctx.state)
        if recorded is not None:
            scenario = await self._read(recorded, ctx.state)
            if scenario is not None and scenario.status == FAILED:
                # Polling it again would fail again: a retry starts over with a new scenario.
                reason = scenario.error or "no reason given"
                await ctx.log(f"scenario {recorded} failed ({reason}); deleting it")
                await self._delete(ctx, recorded)
                scenario = None
            if scenario is None:
                await ctx.log(f"scenario {recorded} is gone; creating a new one")
                # The job's key names the scenario created first, which the orchestrator
                # would hand back; the replacement gets a key of its own, the same on every
                # retry of this replacement.
                key = f"{ctx.idempotency_key}:after:{recorded}"
            else:
                await ctx.log(f"scenario {recorded} was created earlier ({scenario.status})")
        if scenario is None:
            scenario = await self._create(ctx, key)
        if scenario.status == STOPPED:
            await self._post_start(ctx, scenario.id)
        return await self._wait_running(ctx, scenario.id)

    async def start(self, ctx: ProvisionContext) -> ProvisionResult:
        scenario_id = _scenario_id(ctx.state)
        if scenario_id is None or not await self._post_start(ctx, scenario_id):
            # Nothing was ever created, or it has been deleted since: starting means
            # creating, under this job's idempotency key.
            return await self.provision(ctx.with_state({}))
        return await self._wait_running(ctx, scenario_id)

    async def _post_start(self, ctx: ProvisionContext, scenario_id: str) -> bool:
        """Ask the orchestrator to start the scenario; False when it does not exist."""
        response = await self._request(
            "POST", self._scenario_url(scenario_id, "start"), ok={200, 202}, state=ctx.state
        )
        if response.status_code == 404:
            await ctx.log(f"scenario {scenario_id} is gone")
            return False
        await ctx.log(f"asked the orchestrator to start scenario {scenario_id}")
        return True

    async def stop(self, ctx: ProvisionContext) -> ProvisionResult:
        scenario_id = _scenario_id(ctx.state)
        if scenario_id is None:
            return ProvisionResult(state=ctx.state, connection=None)
        response = await self._request(
            "POST", self._scenario_url(scenario_id, "stop"), ok={200, 202}, state=ctx.state
        )
        if response.status_code == 404:
            await ctx.log(f"scenario {scenario_id} is gone; nothing to stop")
            return ProvisionResult(state=_state(scenario_id, STOPPED), connection=None)
        await ctx.log(f"asked the orchestrator to stop scenario {scenario_id}")
        scenario = await self._poll(
            ctx,
            scenario_id,
            # A failed scenario runs no more than a stopped one.
            until={STOPPED, DELETED, FAILED},
            within=self.config.stop_timeout_seconds,
            waiting_for="stopped",
        )
        status = scenario.status if scenario is not None else STOPPED
        return ProvisionResult(state=_state(scenario_id, status), connection=None)

    async def destroy(self, ctx: ProvisionContext) -> None:
        scenario_id = _scenario_id(ctx.state)
        if scenario_id is not None:
            await self._delete(ctx, scenario_id)

    async def _delete(self, ctx: ProvisionContext, scenario_id: str) -> None:
        """Delete the scenario and wait until it is gone (at once when it already is)."""
        response = await self._request(
            "DELETE", self._scenario_url(scenario_id), ok={200, 202, 204}, state=ctx.state
        )
        if response.status_code == 404:
            await ctx.log(f"scenario {scenario_id} was already gone")
            return
        await ctx.log(f"asked the orchestrator to delete scenario {scenario_id}")
        if response.status_code == 202:
            await self._poll(
                ctx,
                scenario_id,
                until={DELETED},
                within=self.config.stop_timeout_seconds,
                waiting_for="deleted",
            )

    async def status(self, ctx: ProvisionContext) -> WorkspaceStatus:
        scenario_id = _scenario_id(ctx.state)
        if scenario_id is None:
            return WorkspaceStatus(running=False, detail="no scenario")
        scenario = await self._read(scenario_id, ctx.state)
        if scenario is None:
            return WorkspaceStatus(running=False, detail=f"scenario {scenario_id} is gone")
        detail = f"scenario {scenario_id}: {scenario.status}"
        if scenario.error:
            detail += f" ({scenario.error})"
        if scenario.status == RUNNING:
            return WorkspaceStatus(
                running=True, connection=self._connection(scenario), detail=detail
            )
        return WorkspaceStatus(running=False, detail=detail)

    async def _create(self, ctx: ProvisionContext, key: str) -> Scenario:
        workspace = ctx.workspace
        body = {
            "workspace_id": str(workspace.id),
            "tenant_id": str(workspace.tenant_id),
            "name": workspace.name,
            "template_id": str(workspace.template_id),
            "template_version": workspace.template_version,
            "spec": ctx.spec,
        }
        response = await self._request(
            "POST",
            self.config.collection_url,
            ok={200, 201, 202},
            json=body,
            headers={"Idempotency-Key": key},
            state=ctx.state,
            not_found_ok=False,
        )
        scenario = Scenario.parse(response)
        verb = "created" if response.status_code in (201, 202) else "found"
        await ctx.log(f"orchestrator {verb} scenario {scenario.id} ({scenario.status})")
        return scenario

    async def _wait_running(self, ctx: ProvisionContext, scenario_id: str) -> ProvisionResult:
        scenario = await self._poll(
            ctx,
            scenario_id,
            until={RUNNING},
            within=self.config.ready_timeout_seconds,
            waiting_for=RUNNING,
        )
        if scenario is None:
            # Saved state forgets the id, so the next attempt creates the scenario again.
            raise ProvisionerError(f"scenario {scenario_id} disappeared while starting", state={})
        connection = self._connection(scenario)
        await ctx.log(f"scenario {scenario_id} is running at {connection['url']}")
        return ProvisionResult(state=_state(scenario_id, RUNNING), connection=connection)

    async def _poll(
        self,
        ctx: ProvisionContext,
        scenario_id: str,
        *,
        until: Collection[str],
        within: float,
        waiting_for: str,
    ) -> Scenario | None:
        """Read the scenario until its status is in `until`; None when it is gone (404)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        delay = min(0.25, self.config.poll_interval_seconds)
        last_status: str | None = None
        state = _state(scenario_id, "unknown")
        while True:
            scenario = await self._read(scenario_id, state)
            if scenario is None:
                return None
            state = _state(scenario_id, scenario.status)
            if scenario.status != last_status:
                await ctx.log(f"scenario {scenario_id}: {scenario.status}")
                last_status = scenario.status
            if scenario.status in until:
                return scenario
            if scenario.status == FAILED:
                raise ProvisionerError(
                    f"scenario {scenario_id} failed: {scenario.error or 'no reason given'}",
                    state=state,
                )
            if loop.time() >= deadline:
                raise ProvisionerError(
                    f"scenario {scenario_id} was not {waiting_for} within {within:g} s "
                    f"(last status: {scenario.status})",
                    state=state,
                )
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, self.config.poll_interval_seconds)

    async def _read(self, scenario_id: str, state: dict[str, Any]) -> Scenario | None:
        response = await self._request(
            "GET", self._scenario_url(scenario_id), ok={200}, state=state
        )
        if response.status_code == 404:
            return None
        return Scenario.parse(response)

    async def _request(
        self,
        method: str,
        url: str,
        *,
        ok: Collection[int],
        state: dict[str, Any],
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        not_found_ok: bool = True,
    ) -> httpx.Response:
        """Send one request, retrying transient failures; return a response in `ok` or 404.

        `state` goes into the raised errors, so what is known about the scenario is saved
        even when the call fails.
        """
        last_failure = ""
        for attempt in range(1, self.config.max_attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._client.request(method, url, json=json, headers=headers)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise PermanentProvisionerError(
                    f"the orchestrator URL {url!r} is unusable: {exc}", state=state
                ) from exc
            except httpx.TransportError as exc:
                last_failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
            else:
                code = response.status_code
                if code in ok or (code == 404 and not_found_ok):
                    return response
                if code < 500 and code not in RETRYABLE_STATUS:
                    raise PermanentProvisionerError(
                        f"the orchestrator refused {method} {url}: {code} {_excerpt(response)}",
                        state=state,
                    )
                last_failure = f"{code} {_excerpt(response)}"
                retry_after = _retry_after(response)
            if attempt < self.config.max_attempts:
                await asyncio.sleep(self._backoff(attempt, retry_after))
        raise ProvisionerError(
            f"{method} {url} failed {self.config.max_attempts} times; last: {last_failure}",
            state=state,
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = self.config.backoff_max_seconds
        if retry_after is not None:
            return min(retry_after, cap)
        delay = min(self.config.backoff_seconds * 2.0 ** (attempt - 1), cap)
        # Jitter spreads the retries of many workers hitting the same outage.
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography

    def _scenario_url(self, scenario_id: str, action: str | None = None) -> str:
        # Quoted, so an id cannot smuggle path segments into the URL.
        url = f"{self.config.collection_url}/{quote(scenario_id, safe='')}"
        return f"{url}/{action}" if action else url

    def _connection(self, scenario: Scenario) -> dict[str, Any]:
        console_url = f"{self.config.console_base_url.rstrip('/')}/{quote(scenario.id, safe='')}"
        if scenario.connection is not None:
            connection = dict(scenario.connection)
            connection.setdefault("url", scenario.url or console_url)
        else:
            connection = _from_url(scenario.url) if scenario.url else {"url": console_url}
        connection["console_url"] = console_url
        connection["scenario_id"] = scenario.id
        return connection


def _scenario_id(state: dict[str, Any]) -> str | None:
    value = state.get("scenario_id")
    return value if isinstance(value, str) and value else None


def _state(scenario_id: str, status: str) -> dict[str, Any]:
    return {"scenario_id": scenario_id, "status": status}


def _from_url(url: str) -> dict[str, Any]:
    connection: dict[str, Any] = {"url": url}
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return connection
    if parsed.host:
        connection["host"] = parsed.host
        connection["protocol"] = parsed.scheme
        default_port = {"http": 80, "https": 443}.get(parsed.scheme)
        port = parsed.port or default_port
        if port is not None:
            connection["port"] = port
    return connection


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip()
    return text[:ERROR_EXCERPT] + ("…" if len(text) > ERROR_EXCERPT else "")
