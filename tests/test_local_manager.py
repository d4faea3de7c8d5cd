"""Tests of the local Flamenco manager itself, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import HOW_TO_ENABLE_SPEC, find_spec

from flamenco_deadline_worker.testing.manager import LocalManager

W = "/api/v3/worker"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


SPEC = find_spec()


def echo_task(name: str, task_type: str = "misc", steps: int = 1, **extra: Any) -> dict[str, Any]:
    command = {"name": "echo", "parameters": {"message": name}, "total_step_count": steps}
    return {"name": name, "task_type": task_type, "commands": [command], **extra}


@pytest.fixture
async def manager() -> AsyncIterator[LocalManager]:
    """A manager that checks every worker request and answer against the spec, when openapi-core is there."""
    validate = SPEC
    try:
        import openapi_core  # noqa: F401
    except ImportError:
        validate = None
    mgr = LocalManager(validate_against=validate, seed=1)
    await mgr.start()
    yield mgr
    await mgr.stop()
    assert mgr.spec_violations == []


@pytest.fixture
async def plain_manager() -> AsyncIterator[LocalManager]:
    """A manager without spec checks, for deliberately off-spec requests."""
    mgr = LocalManager(seed=2)
    await mgr.start()
    yield mgr
    await mgr.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


class Worker:
    """The few calls a worker makes, spelled out so the tests read like the protocol."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.id, self.secret = "", "s3cret"

    @property
    def auth(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.id}:{self.secret}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def register(self, task_types: list[str] | None = None) -> dict[str, Any]:
        body = {
            "name": "w1",
            "secret": self.secret,
            "platform": "linux",
            "supported_task_types": task_types or ["misc"],
        }
        async with self.http.post(f"{self.url}{W}/register-worker", json=body) as resp:
            assert resp.status == 200
            answer: dict[str, Any] = await resp.json()
        self.id = answer["uuid"]
        return answer

    async def sign_on(self, task_types: list[str] | None = None) -> aiohttp.ClientResponse:
        body = {"name": "w1", "supported_task_types": task_types or ["misc"], "software_version": "0.1.0"}
        async with self.http.post(f"{self.url}{W}/sign-on", json=body, headers=self.auth) as resp:
            await resp.read()
            return resp

    async def state_changed(self, status: str) -> None:
        async with self.http.post(f"{self.url}{W}/state-changed", json={"status": status}, headers=self.auth) as r:
            assert r.status == 204

    async def start(self, task_types: list[str] | None = None) -> Worker:
        await self.register(task_types)
        assert (await self.sign_on(task_types)).status == 200
        await self.state_changed("awake")
        return self

    async def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {**self.auth, **(headers or {})}
        async with self.http.request(method, f"{self.url}{W}{path}", headers=headers, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.read()
            return resp.status, body, resp

    async def get_task(self) -> tuple[int, Any]:
        status, body, _ = await self.call("POST", "/task")
        return status, body

    async def update(self, task_id: str, **update: Any) -> tuple[int, Any]:
        status, body, _ = await self.call("POST", f"/task/{task_id}", json=update)
        return status, body

    async def may_i_run(self, task_id: str) -> dict[str, Any]:
        status, body, _ = await self.call("GET", f"/task/{task_id}/may-i-run")
        assert status == 200
        return body  # type: ignore[no-any-return]


async def test_version(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{manager.url}/api/v3/version") as resp:
        assert resp.status == 200
        assert {"version", "shortversion", "name", "git"} <= set(await resp.json())


async def test_register_sign_on_and_state(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = Worker(http, manager.url)
    registered = await worker.register(["misc", "blender"])
    assert {"uuid", "name", "address", "status", "software", "current_task"} <= set(registered)
    assert registered["address"] == "127.0.0.1"
    assert manager.workers[worker.id].supported_task_types == ["misc", "blender"]

    sign_on = {"name": "w1", "supported_task_types": ["misc"], "software_version": "1"}
    status, body, _ = await worker.call("POST", "/sign-on", json=sign_on)
    assert (status, body) == (200, {"status_requested": "awake"})
    assert manager.workers[worker.id].status == "starting"
    await worker.state_changed("awake")
    assert manager.workers[worker.id].status == "awake"
    status, _, _ = await worker.call("GET", "/state")
    assert status == 204


async def test_wrong_credentials_get_401_error_json(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = Worker(http, manager.url)
    await worker.register()
    worker.secret = "wrong"
    resp = await worker.sign_on()
    assert resp.status == 401
    status, body = await worker.get_task()
    assert status == 401 and body["code"] == 401 and "secret" in body["message"]
    worker.id = "no-such-worker"
    status, body, _ = await worker.call("GET", "/state")
    assert status == 401 and body["code"] == 401


async def test_tasks_in_order_resent_and_filtered_by_type(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, manager.url).start(["misc"])
    manager.submit_job("render", [echo_task("render", task_type="blender")])
    job_id = manager.submit_job("two", [echo_task("first", steps=2), echo_task("second")])
    first, second = manager.job_tasks(job_id)

    status, assigned = await worker.get_task()
    assert status == 200
    assert assigned["uuid"] == first.id and assigned["job"] == job_id and assigned["status"] == "active"
    assert assigned["steps_total"] == 2 and assigned["steps_completed"] == 0
    assert assigned["commands"][0]["total_step_count"] == 2
    assert first.worker_id == worker.id and manager.job(job_id).status == "active"

    # Asking again while holding an active task: the same task comes back.
    status, again = await worker.get_task()
    assert (status, again["uuid"]) == (200, first.id)

    assert await worker.update(first.id, taskStatus="completed", steps_completed=2) == (204, b"")
    status, assigned = await worker.get_task()
    assert assigned["uuid"] == second.id
    await worker.update(second.id, taskStatus="completed")
    # Only the blender task is left, and this worker does not do blender.
    assert await worker.get_task() == (204, b"")


async def test_depends_on_holds_a_task_back(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, manager.url).start()
    job_id = manager.submit_job("deps", [echo_task("video", depends_on=["frames"]), echo_task("frames")])
    video, frames = manager.job_tasks(job_id)
    assert (await worker.get_task())[1]["uuid"] == frames.id
    await worker.update(frames.id, taskStatus="completed")
    assert (await worker.get_task())[1]["uuid"] == video.id


async def test_updates_log_steps_and_job_status(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, manager.url).start()
    job_id = manager.submit_job("job", [echo_task("a", steps=3)])
    (task,) = manager.job_tasks(job_id)
    await worker.get_task()

    assert await worker.update(task.id, activity="starting", log="line 1\n") == (204, b"")
    assert await worker.update(task.id, log="line 2\n", steps_completed=2) == (204, b"")
    status, body = await worker.update(task.id, steps_completed=4)
    assert status == 400 and body["code"] == 400 and "steps_total" in body["message"]
    assert (task.activity, task.steps_completed, task.log) == ("starting", 2, "line 1\nline 2\n")
    assert [u.answer for u in task.updates] == [204, 204] and task.rejected_updates[0].answer == 400

    await worker.update(task.id, taskStatus="completed", steps_completed=3)
    await manager.wait_for(lambda: manager.job(job_id).status == "completed", timeout=5)

    failing = manager.submit_job("fails", [echo_task("x"), echo_task("y")])
    x, y = manager.job_tasks(failing)
    await worker.get_task()
    await worker.update(x.id, taskStatus="failed", log="boom\n")
    assert manager.job(failing).status == "failed"
    # The rest of a failed job is not handed out.
    assert await worker.get_task() == (204, b"")
    assert y.status == "queued"


async def test_not_awake_gets_409_error_json(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = Worker(http, manager.url)
    await worker.register()
    await worker.sign_on()  # "starting" until state-changed says awake
    manager.submit_job("job", [echo_task("a")])
    status, body = await worker.get_task()
    assert status == 409 and body["code"] == 409


@pytest.mark.parametrize("to_other_worker", [False, True])
async def test_reassigned_task_is_refused(
    manager: LocalManager, http: aiohttp.ClientSession, to_other_worker: bool
) -> None:
    worker = await Worker(http, manager.url).start()
    (task,) = manager.job_tasks(manager.submit_job("job", [echo_task("a")]))
    await worker.get_task()
    assert (await worker.may_i_run(task.id))["mayKeepRunning"] is True

    manager.reassign_task(task.id, to_other_worker=to_other_worker)
    status, body = await worker.update(task.id, log="late\n")
    assert status == 409 and body["code"] == 409
    assert task.log == "" and task.rejected_updates[-1].answer == 409
    answer = await worker.may_i_run(task.id)
    assert answer["mayKeepRunning"] is False and answer["statusChangeRequested"] is False
    assert "not assigned" in answer["reason"]
    assert task.status == ("active" if to_other_worker else "queued")


async def test_cancel_task_stops_it_through_may_i_run(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, manager.url).start()
    job_id = manager.submit_job("job", [echo_task("a")])
    (task,) = manager.job_tasks(job_id)
    await worker.get_task()
    manager.cancel_task(task.id)
    answer = await worker.may_i_run(task.id)
    assert answer == {"mayKeepRunning": False, "reason": "task is canceled", "statusChangeRequested": False}
    # The worker may still report while stopping; the task stays canceled.
    assert await worker.update(task.id, taskStatus="failed", log="aborted\n") == (204, b"")
    assert task.status == "canceled" and manager.job(job_id).status == "canceled"


async def test_state_change_request(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, manager.url).start()
    (task,) = manager.job_tasks(manager.submit_job("job", [echo_task("a")]))
    await worker.get_task()

    manager.request_state(worker.id, "asleep")
    assert await worker.get_task() == (423, {"status_requested": "asleep"})
    answer = await worker.may_i_run(task.id)
    assert answer["mayKeepRunning"] is False and answer["statusChangeRequested"] is True
    status, body, _ = await worker.call("GET", "/state")
    assert (status, body) == (200, {"status_requested": "asleep"})

    await worker.state_changed("asleep")
    assert manager.workers[worker.id].status_requested is None
    assert (await worker.call("GET", "/state"))[0] == 204
    status, body = await worker.get_task()
    assert status == 409 and "asleep" in body["message"]

    await worker.sign_on()
    await worker.state_changed("awake")
    assert (await worker.get_task())[0] == 200


async def test_sign_off_requeues_active_tasks(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, manager.url).start()
    (task,) = manager.job_tasks(manager.submit_job("job", [echo_task("a")]))
    await worker.get_task()
    assert (await worker.call("POST", "/sign-off"))[0] == 204
    assert manager.workers[worker.id].status == "offline"
    assert (task.status, task.worker_id) == ("queued", None)


async def test_output_produced(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, manager.url).start()
    (task,) = manager.job_tasks(manager.submit_job("job", [echo_task("a")]))
    await worker.get_task()
    headers = {"Content-Type": "image/png"}
    status, _, _ = await worker.call("POST", f"/task/{task.id}/output-produced", data=PNG, headers=headers)
    assert status == 202
    assert task.preview is not None and task.preview.data == PNG and task.preview.content_type == "image/png"
    assert task.previews_received == 1


async def test_output_produced_refusals(plain_manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, plain_manager.url).start()
    (task,) = plain_manager.job_tasks(plain_manager.submit_job("job", [echo_task("a")]))
    path = f"/task/{task.id}/output-produced"
    status, body, _ = await worker.call("POST", path, data=b"GIF89a", headers={"Content-Type": "image/gif"})
    assert status == 415 and body["code"] == 415

    async def chunks() -> AsyncIterator[bytes]:
        yield PNG

    status, body, _ = await worker.call("POST", path, data=chunks(), headers={"Content-Type": "image/png"})
    assert status == 411 and body["code"] == 411
    assert task.preview is None


async def test_go_down_and_come_back(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, manager.url).start()
    url = manager.url
    await manager.go_down()
    with pytest.raises(aiohttp.ClientConnectionError):
        await worker.call("GET", "/state")  # the pooled keep-alive connection was dropped as well
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh.get(f"{url}/api/v3/version")
    await manager.come_back()
    assert manager.url == url
    assert (await worker.call("GET", "/state"))[0] == 204  # state survived


async def test_update_failure_ratio(plain_manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, plain_manager.url).start()
    (task,) = plain_manager.job_tasks(plain_manager.submit_job("job", [echo_task("a")]))
    await worker.get_task()

    plain_manager.faults.update_failure_ratio = 1.0
    seen: set[int] = set()
    for _ in range(20):
        status, body, resp = await worker.call("POST", f"/task/{task.id}", json={"log": "x\n"})
        assert status in (500, 503) and body["code"] == status
        if status == 503:
            assert resp.headers["Retry-After"] in ("0", "1")
        seen.add(status)
    assert seen == {500, 503}
    assert task.log == "" and len(task.rejected_updates) == 20
    assert (await worker.may_i_run(task.id))["mayKeepRunning"] is True  # only task updates fail

    plain_manager.faults.update_failure_ratio = 0.5
    answers = [(await worker.update(task.id, log="y\n"))[0] for _ in range(40)]
    assert 5 < answers.count(204) < 35
    assert task.log == "y\n" * answers.count(204)


async def test_scripted_faults(plain_manager: LocalManager, http: aiohttp.ClientSession) -> None:
    worker = await Worker(http, plain_manager.url).start()
    plain_manager.faults.fail_next(f"{W}/task", 503, times=2, headers={"Retry-After": "1"})
    plain_manager.faults.fail_next(f"{W}/state", 500, method="GET")
    status, body, resp = await worker.call("POST", "/task")
    assert status == 503 and resp.headers["Retry-After"] == "1" and body["code"] == 503
    assert (await worker.get_task())[0] == 503
    assert (await worker.get_task())[0] == 204
    assert (await worker.call("GET", "/state"))[0] == 500
    assert (await worker.call("GET", "/state"))[0] == 204
    assert [f.status for f in plain_manager.faults.injected] == [503, 503, 500]


async def test_wait_for_wakes_on_http_changes_and_times_out(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    waiter = asyncio.create_task(manager.wait_for(lambda: len(manager.workers) == 1, timeout=5))
    await Worker(http, manager.url).register()
    await waiter
    with pytest.raises(TimeoutError, match="manager state: workers"):
        await manager.wait_for(lambda: False, timeout=0.05)


@pytest.mark.skipif(SPEC is None, reason=f"Flamenco OpenAPI spec not found; {HOW_TO_ENABLE_SPEC}")
async def test_invalid_request_is_a_spec_violation(http: aiohttp.ClientSession) -> None:
    pytest.importorskip("openapi_core")
    assert SPEC is not None
    mgr = LocalManager(validate_against=SPEC)
    await mgr.start()
    try:
        body = {"secret": "s", "platform": "linux", "supported_task_types": ["misc", 3]}
        async with http.post(f"{mgr.url}{W}/register-worker", json=body) as resp:
            assert resp.status == 400
        assert any("registerWorker: request" in v and "'name' is a required property" in v for v in mgr.spec_violations)
        assert any("supported_task_types.1" in v for v in mgr.spec_violations)
        # A malformed command the manager hands out is its own answer's violation.
        mgr.spec_violations.clear()
        worker = await Worker(http, mgr.url).start()
        mgr.submit_job("bad", [{"name": "t", "task_type": "misc", "commands": [{"name": "echo"}]}])
        status, assigned = await worker.get_task()
        assert status == 200 and assigned["commands"] == [{"name": "echo"}]
        assert len(mgr.spec_violations) == 2
        assert all(v.startswith("scheduleTask: answer 200") for v in mgr.spec_violations)
    finally:
        await mgr.stop()


async def test_local_http_api(manager: LocalManager, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{manager.url}/local/jobs", json={"name": "j", "tasks": [echo_task("a")]}) as resp:
        assert resp.status == 200
        job_id = (await resp.json())["id"]
    worker = await Worker(http, manager.url).start()
    task_id = (await worker.get_task())[1]["uuid"]
    await worker.update(task_id, log="one\ntwo\n", activity="echoing")
    async with http.get(f"{manager.url}/local/jobs/{job_id}") as resp:
        job = await resp.json()
    assert job["status"] == "active"
    assert job["tasks"][0] | {"id": ""} == {
        "id": "",
        "name": "a",
        "task_type": "misc",
        "status": "active",
        "activity": "echoing",
        "steps_completed": 0,
        "steps_total": 1,
        "worker": worker.id,
        "log_lines": 2,
    }
    async with http.get(f"{manager.url}/local/tasks/{task_id}/log") as resp:
        assert await resp.text() == "one\ntwo\n"
    async with http.post(f"{manager.url}/local/jobs", json={"name": "j"}) as resp:
        assert resp.status == 400


async def test_standalone_module_prints_its_url(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flamenco_deadline_worker.testing.manager",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        url = line.split()[-1]
        assert url.startswith("http://127.0.0.1:")
        async with http.get(f"{url}/api/v3/version") as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
