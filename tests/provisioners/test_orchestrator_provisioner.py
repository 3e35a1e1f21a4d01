"""The orchestrator driver against a real HTTP server that speaks the contract."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from provisioners.conftest import ContextFactory, JobLog
from provisioners.fake_orchestrator import PATH, FakeOrchestrator, ServedOrchestrator
from spawnpoint.provisioners.base import PermanentProvisionerError, ProvisionerError
from spawnpoint.provisioners.orchestrator import OrchestratorConfig, OrchestratorProvisioner

CONSOLE = "https://console.example.test/c"


def config(url: str, **values: Any) -> OrchestratorConfig:
    defaults: dict[str, Any] = {
        "url": url,
        "scenarios_path": PATH,
        "console_base_url": CONSOLE,
        "request_timeout_seconds": 2.0,
        "connect_timeout_seconds": 1.0,
        "max_attempts": 4,
        "backoff_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "poll_interval_seconds": 0.02,
        "ready_timeout_seconds": 5.0,
        "stop_timeout_seconds": 5.0,
        "trust_env": False,
    }
    return OrchestratorConfig(_env_file=None, **{**defaults, **values})


@pytest.fixture
def fake() -> FakeOrchestrator:
    return FakeOrchestrator()


@pytest.fixture
def served(fake: FakeOrchestrator) -> Iterator[ServedOrchestrator]:
    with ServedOrchestrator(fake) as server:
        yield server


@pytest.fixture
async def driver(served: ServedOrchestrator) -> AsyncIterator[OrchestratorProvisioner]:
    async with OrchestratorProvisioner(config(served.url)) as provisioner:
        yield provisioner


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_lifecycle(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    spec = {"image": "example/scenario:1", "cpu": 2}
    ctx = make_ctx(spec=spec, idempotency_key="job-1")

    result = await driver.provision(ctx)

    scenario_id = result.state["scenario_id"]
    assert result.connection == {
        "url": f"https://scenarios.example.test:8443/{scenario_id}/",
        "host": "scenarios.example.test",
        "port": 8443,
        "protocol": "https",
        "console_url": f"{CONSOLE}/{scenario_id}",
        "scenario_id": scenario_id,
    }
    [create] = fake.requests("POST")
    assert create.headers["idempotency-key"] == "job-1"
    assert create.headers["content-type"] == "application/json"
    workspace = ctx.workspace
    assert json.loads(create.body) == {
        "workspace_id": str(workspace.id),
        "tenant_id": str(workspace.tenant_id),
        "name": workspace.name,
        "template_id": str(workspace.template_id),
        "template_version": workspace.template_version,
        "spec": spec,
    }
    status = await driver.status(ctx.with_state(result.state))
    assert status.running
    assert status.connection == result.connection

    stopped = await driver.stop(ctx.with_state(result.state))
    assert stopped.connection is None
    assert stopped.state == {"scenario_id": scenario_id, "status": "stopped"}
    assert fake.scenarios[scenario_id].status == "stopped"
    status = await driver.status(ctx.with_state(stopped.state))
    assert not status.running
    assert "stopped" in status.detail
    await driver.stop(ctx.with_state(stopped.state))

    started = await driver.start(ctx.with_state(stopped.state))
    assert started.connection == result.connection
    assert len(fake.requests("POST", f"{PATH}/{scenario_id}/start")) == 1
    assert list(fake.scenarios) == [scenario_id]

    await driver.destroy(ctx.with_state(started.state))
    assert fake.scenarios == {}
    await driver.destroy(ctx.with_state(started.state))
    status = await driver.status(ctx.with_state(started.state))
    assert not status.running
    assert "gone" in status.detail


async def test_a_rerun_with_a_recorded_scenario_polls_instead_of_creating(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    ctx = make_ctx()
    first = await driver.provision(ctx)
    again = await driver.provision(make_ctx(workspace=ctx.workspace, state=first.state))
    assert again.state == first.state
    assert len(fake.requests("POST")) == 1
    assert len(fake.scenarios) == 1


async def test_retried_creates_with_one_key_make_one_scenario(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    # The first create happens but its response is lost: the driver retries the POST.
    fake.lose_responses = 1
    ctx = make_ctx(idempotency_key="job-7")
    first = await driver.provision(ctx)
    # The worker then dies before the state is saved: the job runs again from nothing.
    second = await driver.provision(ctx)

    creates = fake.requests("POST")
    assert len(creates) == 3
    assert {seen.headers["idempotency-key"] for seen in creates} == {"job-7"}
    assert len(fake.scenarios) == 1
    assert first.state["scenario_id"] == second.state["scenario_id"]


async def test_503s_are_retried_with_backoff(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    fake.unavailable = 3
    result = await driver.provision(make_ctx())
    assert result.connection is not None
    assert len(fake.requests("POST")) == 4
    assert len(fake.scenarios) == 1


async def test_429_is_retried_after_retry_after(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    fake.throttle = 2
    result = await driver.provision(make_ctx())
    assert result.state["status"] == "running"


async def test_an_outage_longer_than_the_retries_is_a_retryable_error(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    fake.unavailable = 100
    with pytest.raises(ProvisionerError, match="failed 4 times; last: 503") as caught:
        await driver.provision(make_ctx())
    assert caught.value.retryable
    assert len(fake.requests("POST")) == 4


async def test_connection_refused_is_a_retryable_error(make_ctx: ContextFactory) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    async with OrchestratorProvisioner(config(url)) as driver:
        with pytest.raises(ProvisionerError, match="ConnectError") as caught:
            await driver.provision(make_ctx())
    assert caught.value.retryable


async def test_a_timed_out_request_is_retried(
    served: ServedOrchestrator, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    fake.slow, fake.slow_seconds = 1, 1.0
    async with OrchestratorProvisioner(config(served.url, request_timeout_seconds=0.3)) as driver:
        result = await driver.provision(make_ctx())
    assert result.state["status"] == "running"
    assert len(fake.requests("POST")) == 2
    assert len(fake.scenarios) == 1


@pytest.mark.parametrize("status_code", [400, 403, 409, 422])
async def test_4xx_fails_permanently_without_retrying(
    driver: OrchestratorProvisioner,
    fake: FakeOrchestrator,
    make_ctx: ContextFactory,
    status_code: int,
) -> None:
    fake.reject_creates_with = status_code
    with pytest.raises(PermanentProvisionerError, match=f"{status_code}.*bad spec"):
        await driver.provision(make_ctx())
    assert len(fake.requests("POST")) == 1


async def test_a_response_without_a_scenario_fails_permanently(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    fake.malformed = True
    with pytest.raises(PermanentProvisionerError, match="no scenario object"):
        await driver.provision(make_ctx())


async def test_a_failed_scenario_reports_the_orchestrators_error(
    driver: OrchestratorProvisioner,
    fake: FakeOrchestrator,
    make_ctx: ContextFactory,
    job_log: JobLog,
) -> None:
    fake.outcome = "failed"
    with pytest.raises(ProvisionerError, match="image pull failed") as caught:
        await driver.provision(make_ctx())
    assert caught.value.retryable
    # The id is kept, so destroying the workspace can delete the failed scenario.
    assert caught.value.state is not None
    scenario_id = caught.value.state["scenario_id"]
    assert scenario_id in fake.scenarios
    assert f"scenario {scenario_id}: failed" in job_log.lines


async def test_a_retry_replaces_a_failed_scenario_with_one_new_scenario(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    fake.outcome = "failed"
    first = make_ctx()
    with pytest.raises(ProvisionerError) as caught:
        await driver.provision(first)
    assert caught.value.state is not None
    failed_id = caught.value.state["scenario_id"]

    fake.outcome = "running"
    retry = make_ctx(
        workspace=first.workspace,
        state=caught.value.state,
        idempotency_key=first.idempotency_key,
    )
    result = await driver.provision(retry)
    replacement = result.state["scenario_id"]
    assert replacement != failed_id
    assert failed_id not in fake.scenarios
    assert [r.path for r in fake.requests("DELETE", f"{PATH}/{failed_id}")] == [
        f"{PATH}/{failed_id}"
    ]
    keys = [r.headers["idempotency-key"] for r in fake.requests("POST")]
    assert keys == [first.idempotency_key, f"{first.idempotency_key}:after:{failed_id}"]
    # A worker that dies before recording the replacement retries with the old state: the
    # replacement's own key hands back the same scenario instead of making a third.
    again = await driver.provision(retry)
    assert again.state["scenario_id"] == replacement
    assert list(fake.scenarios) == [replacement]


async def test_a_scenario_that_is_not_ready_in_time_fails_with_its_id(
    served: ServedOrchestrator, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    fake.polls_to_running = 1_000_000
    async with OrchestratorProvisioner(config(served.url, ready_timeout_seconds=0.3)) as driver:
        with pytest.raises(ProvisionerError, match=r"was not running within 0\.3 s") as caught:
            await driver.provision(make_ctx())
    assert caught.value.state is not None
    assert caught.value.state["scenario_id"] in fake.scenarios


async def test_an_accepted_delete_is_polled_until_gone(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    fake.delete_async = True
    ctx = make_ctx()
    result = await driver.provision(ctx)
    await driver.destroy(ctx.with_state(result.state))
    assert fake.scenarios == {}


async def test_starting_a_vanished_scenario_creates_a_new_one(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    ctx = make_ctx()
    first = await driver.provision(ctx)
    fake.scenarios.clear()
    started = await driver.start(make_ctx(workspace=ctx.workspace, state=first.state))
    assert started.state["scenario_id"] != first.state["scenario_id"]
    assert list(fake.scenarios) == [started.state["scenario_id"]]


async def test_without_an_orchestrator_url_the_console_link_is_the_url(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    fake.report_urls = False
    result = await driver.provision(make_ctx())
    scenario_id = result.state["scenario_id"]
    assert result.connection == {
        "url": f"{CONSOLE}/{scenario_id}",
        "console_url": f"{CONSOLE}/{scenario_id}",
        "scenario_id": scenario_id,
    }


async def test_nothing_recorded_needs_no_requests(
    driver: OrchestratorProvisioner, fake: FakeOrchestrator, make_ctx: ContextFactory
) -> None:
    ctx = make_ctx()
    assert (await driver.stop(ctx)).connection is None
    await driver.destroy(ctx)
    assert not (await driver.status(ctx)).running
    assert fake.seen == []
