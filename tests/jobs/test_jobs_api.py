"""The Jobs API end to end: enqueue through HTTP, a real worker, logs, cancel, quotas, events.

Every test runs on SQLite and PostgreSQL. The API's registry knows the built-ins, `noop` and
two test types: `test.work` (logs, then succeeds, fails or waits to be cancelled) and
`test.parked`, which no worker runs, so its jobs stay queued for as long as a test needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from job_test_handlers import SERVICE_ECHO
from jobs_support import eventually, get_job, running
from pydantic import Field
from sqlalchemy import select

from conftest import Org, World
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs import worker as worker_module
from spawnpoint.jobs.builtin import BuiltinHandlers
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.errors import JobCancelled
from spawnpoint.jobs.events import JOB_COMPLETED, JOB_ENQUEUED, JOB_FAILED, JOB_QUOTA_EXCEEDED
from spawnpoint.jobs.queue import Backoff, enqueue, request_cancel
from spawnpoint.jobs.registry import HandlerRegistry, NoopPayload, noop
from spawnpoint.jobs.repository import JobRepository
from spawnpoint.jobs.schemas import JobCreate
from spawnpoint.jobs.service import JobService
from spawnpoint.jobs.worker import Worker
from spawnpoint.kit.schemas import InputSchema
from spawnpoint.models import Job, OutboxEvent, Role, WorkspaceState
from spawnpoint.scope import TenantScope
from spawnpoint.security import Principal

WORK = "test.work"
PARKED = "test.parked"
JOB_FIELDS = {
    "id",
    "tenant_id",
    "project_id",
    "actor_id",
    "job_type",
    "state",
    "attempts",
    "max_attempts",
    "payload",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "log_url",
}


class WorkPayload(InputSchema):
    lines: int = Field(2, ge=0, le=100)
    interval: float = Field(0.0, ge=0, le=5)
    until_cancelled: bool = False
    fail: bool = False


async def work(ctx: JobContext) -> dict[str, Any]:
    payload = WorkPayload.model_validate(ctx.payload)
    for n in range(payload.lines):
        ctx.log(f"line {n}")
        # Stands in for the handler's work between two log lines.
        await asyncio.sleep(payload.interval)
    if payload.until_cancelled:
        await ctx.wait_cancel_requested()
        ctx.log("stopping on request")
        raise JobCancelled("stopped on request")
    if payload.fail:
        raise RuntimeError(f"attempt {ctx.attempt} broke\nsecond line of the error")
    return {"lines": payload.lines}


ARTIFACT = "test.artifact"
BUILTINS = BuiltinHandlers()


async def artifact_then_fail_once(ctx: JobContext) -> dict[str, Any]:
    """Write an artifact as the built-ins do, then die on the first attempt."""
    artifact_id = await BUILTINS.write_artifact(
        ctx, name="twice", artifact_type="test", document={"attempt": ctx.attempt}, metadata={}
    )
    if ctx.attempt == 1:
        raise RuntimeError("died after writing the artifact")
    return {"artifact_id": str(artifact_id)}


async def parked(ctx: JobContext) -> None:
    raise AssertionError("no worker runs test.parked")


def worker_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register("noop", noop, payload=NoopPayload)
    BuiltinHandlers().register(registry)
    registry.register(WORK, work, payload=WorkPayload)
    registry.register(ARTIFACT, artifact_then_fail_once, payload=NoopPayload)
    return registry


def api_registry() -> HandlerRegistry:
    registry = worker_registry()
    registry.register(PARKED, parked, payload=NoopPayload)
    # The workspace types are known but not service types: POST /api/jobs refuses them.
    registry.register("workspace.provision", parked)
    return registry


@pytest.fixture(scope="session")
def app_settings(backend_settings: Settings) -> Settings:
    return backend_settings.model_copy(
        update={"job_log_follow_idle_seconds": 1.0, "job_log_poll_seconds": 0.05}
    )


@pytest.fixture(scope="session")
async def api(app_settings: Settings, database: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(app_settings, database=database, job_registry=api_registry())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spawnpoint.test") as c:
        c.app = app  # type: ignore[attr-defined]
        yield c


@pytest.fixture
async def worker(app_settings: Settings, database: Database) -> AsyncIterator[Worker]:
    """A real worker in the test's loop; heartbeats every 0.5 s carry logs and cancels."""
    registry = worker_registry()
    instance = Worker(
        database,
        app_settings,
        registry,
        concurrency=8,
        lease_seconds=1.5,
        poll_interval=0.05,
        grace_seconds=5,
        backoff=Backoff(base_seconds=0.01, cap_seconds=0.05),
    )
    async with running(instance):
        yield instance
    await registry.aclose()


async def post_job(
    api: httpx.AsyncClient, headers: dict[str, str], job_type: str, **body: Any
) -> httpx.Response:
    return await api.post("/api/jobs", headers=headers, json={"job_type": job_type, **body})


async def finished(
    api: httpx.AsyncClient, job_id: str, headers: dict[str, str], *, within: float = 20
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/api/jobs/{job_id}", headers=headers)).json()
        return body if body["state"] in {"succeeded", "failed", "cancelled"} else None

    return await eventually(probe, within=within, what=f"job {job_id} to finish")


async def events(
    api: httpx.AsyncClient, headers: dict[str, str], prefix: str = "service_job_"
) -> list[dict[str, Any]]:
    response = await api.get("/api/events", params={"type": prefix, "limit": 200}, headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_plan_build_lifecycle_through_the_api(
    api: httpx.AsyncClient, world: World, worker: Worker
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    project = await api.post(
        "/api/projects", headers=org.headers[Role.admin], json={"name": f"p-{uuid.uuid4().hex}"}
    )
    project_id = project.json()["id"]
    response = await post_job(
        api,
        member,
        "plan-build",
        payload={"template_id": str(org.template_id)},
        project_id=project_id,
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert set(job) >= JOB_FIELDS
    assert (job["state"], job["attempts"], job["max_attempts"]) == ("queued", 0, 2)
    assert job["log_url"] == f"/api/jobs/{job['id']}/logs"
    assert job["actor_id"] == str(org.users[Role.member])
    assert job["project_id"] == project_id

    done = await finished(api, job["id"], member)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1
    assert done["started_at"]
    assert done["finished_at"]
    result = done["result"]
    assert result["provisioner"] == "dry-run"
    assert result["version"] == 1
    assert result["fits_plan"] is True

    artifact = await api.get(
        f"/api/artifacts/{result['artifact_id']}/download", headers=org.headers[Role.viewer]
    )
    assert artifact.status_code == 200, artifact.text
    plan = artifact.json()
    assert plan["kind"] == "build-plan"
    assert plan["template"]["id"] == str(org.template_id)
    assert plan["provisioner"]["installed"] is True
    assert plan["provisioner"]["steps"]
    assert plan["resources"]["cpu"] == 1.0

    logs = await api.get(job["log_url"], headers=org.headers[Role.viewer])
    assert logs.status_code == 200
    assert logs.headers["content-type"].startswith("text/plain")
    lines = [json.loads(line) for line in logs.text.splitlines()]
    assert lines[0]["event"] == "plan-build.started"
    assert lines[-1]["event"] == "plan-build.done"
    for line in lines:
        assert line["tenant_id"] == str(org.tenant_id)
        assert line["project_id"] == project_id
        assert line["job_id"] == job["id"]

    steps = {e["type"]: e for e in await events(api, member) if e["key"] == job["id"]}
    assert set(steps) == {JOB_ENQUEUED, JOB_COMPLETED}
    completed = steps[JOB_COMPLETED]["payload"]
    assert completed["job_type"] == "plan-build"
    assert completed["tenant_id"] == str(org.tenant_id)
    assert completed["project_id"] == project_id
    assert (completed["retries"], completed["max_retries"]) == (0, 1)
    assert completed["log_url"] == job["log_url"]
    assert completed["artifact_id"] == result["artifact_id"]
    assert steps[JOB_ENQUEUED]["payload"]["state"] == "queued"


async def test_eval_run_stores_the_decision_with_its_reasons(
    api: httpx.AsyncClient, world: World, worker: Worker
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    response = await post_job(api, member, "eval-run", payload={"input": {"action": "spawn"}})
    assert response.status_code == 202, response.text
    done = await finished(api, response.json()["id"], member)
    assert done["state"] == "succeeded", done
    assert done["result"]["allow"] is False
    assert done["result"]["reasons"], done["result"]
    assert done["result"]["engine"] == "embedded"


async def test_a_payload_the_api_accepted_is_read_by_the_worker_under_the_same_limit(
    app_settings: Settings, database: Database, world: World
) -> None:
    settings = app_settings.model_copy(update={"max_json_field_bytes": 200_000})
    app = create_app(settings, database=database, job_registry=api_registry())
    org = await world.org()
    member = org.headers[Role.member]
    document = {"blob": "x" * 100_000}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spawnpoint.test") as c:
        response = await post_job(c, member, "eval-run", payload={"input": document})
        assert response.status_code == 202, response.text[:500]
        worker = Worker(
            database,
            settings,
            worker_registry(),
            concurrency=2,
            lease_seconds=10,
            poll_interval=0.05,
        )
        async with running(worker):
            done = await finished(c, response.json()["id"], member)
    assert done["state"] == "succeeded", done["error"]


async def test_audit_report_counts_actions_and_lists_denials(
    api: httpx.AsyncClient, world: World, worker: Worker
) -> None:
    org = await world.org()
    admin = org.headers[Role.admin]
    refused = await post_job(api, org.headers[Role.viewer], "noop", payload={})
    assert refused.status_code == 403
    response = await post_job(api, admin, "audit-report", payload={})
    assert response.status_code == 202, response.text
    done = await finished(api, response.json()["id"], admin)
    assert done["state"] == "succeeded", done
    assert done["result"]["denied"] == 1
    report = (
        await api.get(f"/api/artifacts/{done['result']['artifact_id']}/download", headers=admin)
    ).json()
    assert report["by_action"]["job.create"] == 2
    assert report["by_result"] == {"denied": 1, "success": 1}
    (denial,) = report["denials"]
    assert denial["action"] == "job.create"
    assert denial["actor"] == f"user:{org.users[Role.viewer]}"
    assert denial["status"] == 403


async def test_a_failing_job_is_retried_then_failed_with_its_event(
    api: httpx.AsyncClient, world: World, worker: Worker
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    response = await post_job(api, member, WORK, payload={"fail": True})
    done = await finished(api, response.json()["id"], member)
    assert (done["state"], done["attempts"], done["max_attempts"]) == ("failed", 2, 2)
    assert (done["retries"], done["max_retries"]) == (1, 1)
    assert "attempt 2 broke" in done["error"]
    steps = {e["type"]: e for e in await events(api, member) if e["key"] == done["id"]}
    assert set(steps) == {JOB_ENQUEUED, JOB_FAILED}
    failed = steps[JOB_FAILED]["payload"]
    assert (failed["retries"], failed["attempts"], failed["state"]) == (1, 2, "failed")
    assert "broke" in failed["error"]
    # One line per entry: the traceback's line breaks are escaped, not new lines.
    logs = (await api.get(done["log_url"], headers=member)).text.splitlines()
    tracebacks = [line for line in logs if line.startswith("attempt ")]
    assert len(tracebacks) == 2
    assert all("\\n" in line for line in tracebacks)


async def test_a_retried_attempt_finds_the_artifact_its_predecessor_wrote(
    api: httpx.AsyncClient, world: World, worker: Worker
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    response = await post_job(api, member, ARTIFACT, payload={})
    done = await finished(api, response.json()["id"], member)
    assert (done["state"], done["attempts"]) == ("succeeded", 2)
    listed = (await api.get("/api/artifacts", headers=member)).json()["items"]
    assert [a["id"] for a in listed] == [done["result"]["artifact_id"]]
    content = await api.get(f"/api/artifacts/{listed[0]['id']}/download", headers=member)
    assert content.json() == {"attempt": 1}
    logs = (await api.get(done["log_url"], headers=member)).text
    assert '"event": "artifact.reused"' in logs


async def test_a_plugins_service_job_type_is_enqueued_through_the_api(
    backend_settings: Settings,
    database: Database,
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dist_info = tmp_path / "acme_jobs-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-jobs\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[spawnpoint.jobs]\nacme = job_test_handlers:register_service\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = create_app(backend_settings, database=database)
    org = await world.org()
    member = org.headers[Role.member]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spawnpoint.test") as c:
        accepted = await post_job(c, member, SERVICE_ECHO, payload={"message": "hi"})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["payload"] == {"message": "hi"}
        refused = await post_job(c, member, SERVICE_ECHO, payload={"message": 7})
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["pointer"] == "#/payload/message"
        unknown = await post_job(c, member, "noop-typo", payload={})
        assert SERVICE_ECHO in unknown.json()["job_types"]


async def test_a_completion_that_rolls_back_leaves_no_event(
    api: httpx.AsyncClient, world: World, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's outcome transaction fails once, after the job's completion was written in
    it: its event goes with it, and the retry writes the job's one completion event."""
    org = await world.org()
    member = org.headers[Role.member]
    job = (await post_job(api, member, WORK, payload={"lines": 0})).json()
    failures: list[str] = []

    def failing_once(write: Any) -> Any:
        # Wraps the worker's completion write (with or without a claim in its transaction).
        async def wrapped(session: Any, *, completions: Any, **kwargs: Any) -> Any:
            written = await write(session, completions=completions, **kwargs)
            if not failures and any(str(c.job_id) == job["id"] for c in completions):
                failures.append(job["id"])
                raise RuntimeError("the database went away mid-commit")
            return written

        return wrapped

    monkeypatch.setattr(
        worker_module, "complete_and_claim", failing_once(worker_module.complete_and_claim)
    )
    registry = worker_registry()
    worker = Worker(
        database,
        api.app.state.settings,  # type: ignore[attr-defined]
        registry,
        concurrency=2,
        lease_seconds=10,
        poll_interval=0.05,
    )
    async with running(worker):
        done = await finished(api, job["id"], member)
    assert failures, "the completion was never attempted"
    assert (done["state"], done["attempts"]) == ("succeeded", 1)
    kinds = [e["type"] for e in await events(api, member) if e["key"] == job["id"]]
    assert sorted(kinds) == [JOB_COMPLETED, JOB_ENQUEUED]


async def test_unknown_job_types_and_unfit_payloads_are_refused_at_enqueue(
    api: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    for job_type in ("no-such-job", "workspace.provision"):
        response = await post_job(api, member, job_type, payload={})
        assert response.status_code == 422, response.text
        body = response.json()
        assert {"plan-build", "eval-run", "audit-report"} <= set(body["job_types"])
        assert "plan-build" in body["detail"]
        assert "workspace.provision" not in body["job_types"]
    bad = await post_job(api, member, "plan-build", payload={"template_id": "nope"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["pointer"] == "#/payload/template_id"
    extra = await post_job(api, member, "eval-run", payload={"input": {}, "extra": 1})
    assert extra.status_code == 422
    backwards = await post_job(
        api,
        member,
        "audit-report",
        payload={"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
    )
    assert backwards.status_code == 422
    for retries in (-1, 21, 1.5, True):
        response = await post_job(api, member, "noop", payload={}, max_retries=retries)
        assert response.status_code == 422, retries
    other = await world.org()
    foreign = await api.post(
        "/api/projects", headers=other.headers[Role.admin], json={"name": f"p-{uuid.uuid4()}"}
    )
    response = await post_job(api, member, "noop", payload={}, project_id=foreign.json()["id"])
    assert response.status_code == 422
    listed = (await api.get("/api/jobs", headers=member)).json()
    assert listed["items"] == []


async def test_idempotency_key_replays_the_first_job(api: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    headers = {**org.headers[Role.member], "Idempotency-Key": "ci-run-7"}
    first = await post_job(api, headers, PARKED, payload={})
    again = await post_job(api, headers, PARKED, payload={})
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    different = await post_job(api, headers, PARKED, payload={}, max_retries=3)
    assert different.status_code == 422
    listed = (await api.get("/api/jobs", headers=org.headers[Role.viewer])).json()
    assert [job["id"] for job in listed["items"]] == [first.json()["id"]]


async def test_list_filters_and_keyset_pages(
    api: httpx.AsyncClient, world: World, database: Database
) -> None:
    org = await world.org(max_concurrent_jobs=20)
    member = org.headers[Role.member]
    project = (
        await api.post(
            "/api/projects", headers=org.headers[Role.admin], json={"name": f"p-{uuid.uuid4()}"}
        )
    ).json()["id"]
    parked_ids = [
        (await post_job(api, member, PARKED, payload={}, project_id=project)).json()["id"]
        for _ in range(3)
    ]
    other_ids = [(await post_job(api, member, "noop", payload={})).json()["id"] for _ in range(2)]
    # A workspace's job appears in the list too.
    async with database.transaction(write=True) as session:
        workspace_job = await enqueue(
            session,
            job_type="workspace.provision",
            payload={"workspace_id": str(uuid.uuid4())},
            tenant_id=org.tenant_id,
        )
        await request_cancel(session, job_id=workspace_job.id)

    async def walk(**params: str) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            query = {**params, "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/api/jobs", params=query, headers=member)).json()
            seen += [job["id"] for job in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return seen

    everything = await walk()
    assert everything == sorted(everything, reverse=True)  # newest first
    assert set(everything) == {*parked_ids, *other_ids, str(workspace_job.id)}
    assert set(await walk(job_type=PARKED)) == set(parked_ids)
    assert set(await walk(project_id=project)) == set(parked_ids)
    assert await walk(state="cancelled") == [str(workspace_job.id)]
    queued = await walk(state="queued")
    assert set(queued) <= {*parked_ids, *other_ids}
    assert set(parked_ids) <= set(queued)
    assert await walk(job_type="workspace.provision", state="queued") == []


async def test_logs_are_followed_while_the_job_runs(
    api: httpx.AsyncClient, world: World, worker: Worker, database: Database
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    job = (await post_job(api, member, WORK, payload={"lines": 6, "interval": 0.3})).json()
    app = api.app  # type: ignore[attr-defined]
    async with Served(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        received: list[tuple[str, str]] = []
        async with http.stream(
            "GET", job["log_url"], params={"follow": "true"}, headers=member, timeout=30
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/plain")
            async for line in stream.aiter_lines():
                state = (await get_job(database, uuid.UUID(job["id"]))).state
                received.append((line, state))
    assert [line for line, _ in received] == [f"line {n}" for n in range(6)]
    # The first lines arrived while the job was still running, and the stream ended with it.
    assert received[0][1] == "running"
    assert (await get_job(database, uuid.UUID(job["id"]))).state == "succeeded"


async def test_following_a_job_that_logs_nothing_ends_after_the_idle_timeout(
    api: httpx.AsyncClient, world: World, app_settings: Settings
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    job = (await post_job(api, member, PARKED, payload={})).json()
    started = time.monotonic()
    response = await api.get(job["log_url"], params={"follow": "true"}, headers=member)
    waited = time.monotonic() - started
    assert response.status_code == 200
    assert response.text == ""
    assert app_settings.job_log_follow_idle_seconds <= waited < 10


async def test_cancel_queued_running_and_finished_jobs(
    api: httpx.AsyncClient, world: World, worker: Worker
) -> None:
    org = await world.org()
    member = org.headers[Role.member]
    queued = (await post_job(api, member, PARKED, payload={})).json()
    response = await api.post(f"/api/jobs/{queued['id']}/cancel", headers=member)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "cancelled"
    assert response.json()["finished_at"] is not None

    job = (await post_job(api, member, WORK, payload={"lines": 1, "until_cancelled": True})).json()

    async def is_running() -> bool:
        body = (await api.get(f"/api/jobs/{job['id']}", headers=member)).json()
        return bool(body["state"] == "running")

    await eventually(is_running, what="the job to start")
    response = await api.post(f"/api/jobs/{job['id']}/cancel", headers=member)
    assert response.status_code == 202
    assert response.json()["state"] == "running"
    assert response.json()["cancel_requested"] is True
    done = await finished(api, job["id"], member)
    assert done["state"] == "cancelled"
    logs = (await api.get(job["log_url"], headers=member)).text
    assert logs.splitlines()[-1] == "stopping on request"

    for finished_id in (queued["id"], job["id"]):
        again = await api.post(f"/api/jobs/{finished_id}/cancel", headers=member)
        assert again.status_code == 409
        assert again.json()["state"] == "cancelled"
    kinds = {e["type"] for e in await events(api, member) if e["key"] == job["id"]}
    assert kinds == {JOB_ENQUEUED}


async def test_members_cancel_their_own_jobs_admins_any(
    api: httpx.AsyncClient, world: World, database: Database
) -> None:
    org = await world.org()
    mine = (await post_job(api, org.headers[Role.member], PARKED, payload={})).json()
    theirs = (await post_job(api, org.headers[Role.publisher], PARKED, payload={})).json()
    response = await api.post(f"/api/jobs/{theirs['id']}/cancel", headers=org.headers[Role.member])
    assert response.status_code == 403
    response = await api.post(f"/api/jobs/{mine['id']}/cancel", headers=org.headers[Role.admin])
    assert response.status_code == 202
    assert response.json()["state"] == "cancelled"
    viewer = await api.post(f"/api/jobs/{theirs['id']}/cancel", headers=org.headers[Role.viewer])
    assert viewer.status_code == 403
    # A workspace's job follows its workspace: not cancelled through the Jobs API.
    async with database.transaction(write=True) as session:
        workspace_job = await enqueue(
            session,
            job_type="workspace.provision",
            payload={"workspace_id": str(uuid.uuid4())},
            tenant_id=org.tenant_id,
        )
    response = await api.post(
        f"/api/jobs/{workspace_job.id}/cancel", headers=org.headers[Role.admin]
    )
    assert response.status_code == 409
    assert (await get_job(database, workspace_job.id)).state == "queued"


async def test_another_tenants_job_is_a_404_on_every_route(
    api: httpx.AsyncClient, world: World, database: Database
) -> None:
    mine, theirs = await world.org(), await world.org()
    job = (await post_job(api, theirs.headers[Role.member], PARKED, payload={})).json()
    admin = mine.headers[Role.admin]
    missing = str(uuid.uuid4())
    for method, suffix in (("GET", ""), ("GET", "/logs"), ("POST", "/cancel")):
        foreign = await api.request(method, f"/api/jobs/{job['id']}{suffix}", headers=admin)
        absent = await api.request(method, f"/api/jobs/{missing}{suffix}", headers=admin)
        assert foreign.status_code == absent.status_code == 404
        assert foreign.json() == absent.json()
    follow = await api.get(f"/api/jobs/{job['id']}/logs?follow=true", headers=admin)
    assert follow.status_code == 404
    assert (await api.get("/api/jobs", headers=admin)).json()["items"] == []
    assert (await get_job(database, uuid.UUID(job["id"]))).state == "queued"
    # The queue's own cancel checks the tenant too.
    async with database.transaction(write=True) as session:
        assert (
            await request_cancel(session, job_id=uuid.UUID(job["id"]), tenant_id=mine.tenant_id)
        ) is None
    assert (await get_job(database, uuid.UUID(job["id"]))).state == "queued"


async def test_fifty_concurrent_enqueues_against_a_quota_of_five(
    api: httpx.AsyncClient, world: World, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    org = await world.org(max_concurrent_jobs=5)
    member = org.headers[Role.member]
    with caplog.at_level(logging.WARNING, logger="spawnpoint.jobs"):
        responses = await asyncio.gather(
            *(post_job(api, member, PARKED, payload={}) for _ in range(50))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * 5 + [429] * 45
    for refused in (r for r in responses if r.status_code == 429):
        body = refused.json()
        assert refused.headers["content-type"] == "application/problem+json"
        assert body["limit"] == "max_concurrent_jobs"
        assert body["allowed"] == 5
        assert body["usage"] == {"concurrent_jobs": 5, "jobs_today": 5}
        assert body["plan"]["max_concurrent_jobs"] == 5
        assert "Retry-After" not in refused.headers
    warnings = [r for r in caplog.records if r.name == "spawnpoint.jobs" and "quota" in r.message]
    assert len(warnings) == 45
    async with database.transaction(write=False) as session:
        jobs = await session.scalars(select(Job.id).where(Job.tenant_id == org.tenant_id))
        assert len(list(jobs)) == 5
    kinds = [e["type"] for e in await events(api, member)]
    assert kinds.count(JOB_ENQUEUED) == 5
    assert kinds.count(JOB_QUOTA_EXCEEDED) == 45
    quotas = (await api.get("/api/quotas", headers=org.headers[Role.viewer])).json()
    assert quotas["concurrent_jobs"] == {"limit": 5, "used": 5, "ratio": 1.0}


async def test_daily_quota_answers_429_with_retry_after(
    api: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(max_jobs_per_day=2, max_concurrent_jobs=10)
    member = org.headers[Role.member]
    for _ in range(2):
        assert (await post_job(api, member, PARKED, payload={})).status_code == 202
    refused = await post_job(api, member, PARKED, payload={})
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 86_400
    body = refused.json()
    assert (body["limit"], body["allowed"]) == ("max_jobs_per_day", 2)
    assert body["usage"]["jobs_today"] == 2
    assert body["plan"]["name"].startswith("plan-")
    (event,) = [e for e in await events(api, member) if e["type"] == JOB_QUOTA_EXCEEDED]
    assert event["payload"]["limit"] == "max_jobs_per_day"
    assert event["payload"]["retry_after"] == int(refused.headers["Retry-After"])


async def test_quotas_show_limits_usage_and_ratios(
    api: httpx.AsyncClient, world: World, database: Database
) -> None:
    org = await world.org(max_concurrent_jobs=4, max_jobs_per_day=10, max_workspaces=4)
    member = org.headers[Role.member]
    job = (await post_job(api, member, PARKED, payload={})).json()
    await post_job(api, member, PARKED, payload={})
    await api.post(f"/api/jobs/{job['id']}/cancel", headers=member)
    await plant(world, org)
    quotas = (await api.get("/api/quotas", headers=org.headers[Role.viewer])).json()
    assert quotas["tenant_id"] == str(org.tenant_id)
    assert quotas["concurrent_jobs"] == {"limit": 4, "used": 1, "ratio": 0.25}
    assert quotas["jobs_today"] == {"limit": 10, "used": 2, "ratio": 0.2}
    assert quotas["workspaces"] == {"limit": 4, "used": 1, "ratio": 0.25}
    assert quotas["cpu"]["used"] == 1.0
    assert quotas["memory_mb"]["used"] == 512
    assert quotas["storage_gb"]["limit"] == 100
    # Counts read back as integers; cpu (two decimals) as a number.
    assert all(isinstance(quotas[name]["limit"], int) for name in ("jobs_today", "workspaces"))
    resets = datetime.fromisoformat(quotas["jobs_today_resets_at"])
    assert (resets.hour, resets.minute) == (0, 0)
    assert timedelta(0) < resets - datetime.now(UTC) <= timedelta(days=1)


async def plant(world: World, org: Org) -> None:
    from factories import plant_workspace

    await plant_workspace(world.database, org, WorkspaceState.running)


async def test_events_roll_back_with_the_enqueue(database: Database, world: World) -> None:
    org = await world.org()
    actor = Principal(user_id=org.users[Role.member], tenant_id=org.tenant_id, role=Role.member)
    registry = api_registry()
    seen: list[uuid.UUID] = []

    async def enqueue_then_fail() -> None:
        async with database.unit_of_work(write=True) as uow:
            service = JobService(
                JobRepository(uow.session, TenantScope.of(actor)), registry=registry
            )
            job = await service.enqueue(actor=actor, job_in=JobCreate(job_type=PARKED))
            seen.append(job.id)
            assert [row["type"] for row in uow.outbox] == [JOB_ENQUEUED]
            raise RuntimeError("something failed after the enqueue")

    with pytest.raises(RuntimeError, match="after the enqueue"):
        await enqueue_then_fail()
    (job_id,) = seen
    async with database.transaction(write=False) as session:
        assert await session.get(Job, job_id) is None
        rows = await session.scalars(select(OutboxEvent).where(OutboxEvent.key == str(job_id)))
        assert list(rows) == []


async def served_app_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Served:
    """Serve `app` with uvicorn on a loopback port in this event loop (real streaming)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __aenter__(self) -> str:
        self.socket = await served_app_port()
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", loop="asyncio", http="h11"
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server._serve(sockets=[self.socket]))

        async def started() -> bool:
            return bool(self.server.started)

        await eventually(started, what="uvicorn to start")
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    async def __aexit__(self, *_: object) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)
        self.socket.close()
