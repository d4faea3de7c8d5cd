"""A local Flamenco-3-compatible Manager for `flamenco-worker demo` and the end-to-end tests.

It speaks the worker part of the Flamenco API (`/api/v3/worker/*`) the way the real Manager answers, keeps
everything in memory, and adds what tests need: an in-process API to submit jobs and inspect tasks, fault
injection, going down and coming back on the same port, and optional checking of every request and answer
against the OpenAPI spec.  All of it runs on one event loop.

Run it standalone with `python -m flamenco_deadline_worker.testing.manager --port 8080`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
import re
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import attrs
from aiohttp import web

from flamenco_deadline_worker.testing.farm import Farm
from flamenco_deadline_worker.testing.records import (
    WORKER_STATUSES,
    Faults,
    JobRecord,
    Preview,
    ReceivedUpdate,
    TaskRecord,
    WorkerRecord,
)

if TYPE_CHECKING:
    from flamenco_deadline_worker.testing.spec_check import SpecChecker

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MANAGER_VERSION = {
    "version": "3.5-local",
    "shortversion": "3.5",
    "name": "Local test Manager",
    "git": "local",
}
PREVIEW_TYPES = frozenset({"image/png", "image/jpeg"})
MAX_PREVIEW_BYTES = 10 * 1024 * 1024
_TASK_UPDATE_PATH = re.compile(r"^/api/v3/worker/task/[^/]+$")
# The UUID a Flamenco 3 Manager announces itself with over SSDP.
SSDP_UUID = "aa80bc5f-d0af-46b8-8630-23bd7e80ec4d"


class _Reply(Exception):
    """Raised by a helper to answer the request right away (auth failure, bad body, unknown task)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def basic_auth(request: web.Request) -> tuple[str, str] | None:
    """(login, password) of HTTP basic auth, or None when absent or malformed."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        login, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("latin-1").partition(":")
    except (ValueError, binascii.Error):
        return None
    return (login, password) if sep else None


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """Flamenco's `Error` JSON, which the real Manager sends with every error status."""
    return web.json_response({"code": status, "message": message}, status=status, headers=headers)


@attrs.frozen
class RequestRecord:
    """One request the manager received: when (time.monotonic()), what, and from which worker (its login)."""

    at: float
    method: str
    path: str
    worker_id: str


class SsdpResponder(asyncio.DatagramProtocol):
    """Answers UPnP/SSDP searches for a Flamenco Manager the way a Flamenco 3 Manager does.

    Bound to a unicast address (127.0.0.1 in tests), so nothing is multicast on the LAN.
    """

    def __init__(self, location: Callable[[], str]) -> None:
        self.location = location
        self.transport: asyncio.DatagramTransport | None = None
        self.searches = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        from flamenco_deadline_worker.backends.flamenco_discovery import SERVICE_TYPE, parse_headers

        start, headers = parse_headers(data)
        if not start.upper().startswith("M-SEARCH") or headers.get("ST") not in (SERVICE_TYPE, "ssdp:all"):
            return
        self.searches += 1
        answer = (
            "HTTP/1.1 200 OK\r\n"
            "CACHE-CONTROL: max-age=1800\r\n"
            "EXT:\r\n"
            f"LOCATION: {self.location()}\r\n"
            "SERVER: Linux UPnP/1.1 local-flamenco-manager/1.0\r\n"
            f"ST: {SERVICE_TYPE}\r\n"
            f"USN: uuid:{SSDP_UUID}::{SERVICE_TYPE}\r\n"
            "\r\n"
        )
        if self.transport is not None:
            self.transport.sendto(answer.encode("ascii"), addr)


class LocalManager(Farm):
    """An in-memory Flamenco Manager on a real port; the Python API for tests comes from `Farm`."""

    def __init__(self, validate_against: Path | None = None, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.validate_against = validate_against
        self.faults = Faults(seed=seed)
        # A reverse proxy's request body limit (nginx: client_max_body_size, 1 MiB by default),
        # answered 413 like nginx does; None: no limit, as the Manager itself sets none.
        self.max_body_bytes: int | None = None
        # A Manager (or proxy) slow to take task updates: each waits this long, and one whose client
        # gave up meanwhile is not applied, as a proxy drops a request its client abandoned.
        self.update_delay = 0.0
        self.too_large_answers = 0
        self.spec_violations: list[str] = []
        self._checker: SpecChecker | None = None
        self._changed_cond = asyncio.Condition()
        self._notifiers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._ssl: ssl.SSLContext | None = None
        # Every request received, for tests and benchmarks that count the load on the Manager.
        self.request_log: list[RequestRecord] = []
        self._ssdp: asyncio.DatagramTransport | None = None
        self.ssdp_responder: SsdpResponder | None = None

    # ----- lifecycle -----

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Start listening (https with ``ssl_context``); answers the base URL.  The port is kept for `come_back()`."""
        if self.validate_against is not None and self._checker is None:
            from flamenco_deadline_worker.testing.spec_check import SpecChecker

            # Parsing the spec takes a moment: keep it off the event loop.
            self._checker = await asyncio.to_thread(SpecChecker, self.validate_against)
        self._host = host
        self._port = port
        self._ssl = ssl_context
        await self._listen()
        log.info("local Flamenco manager listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._ssdp is not None:
            self._ssdp.close()
            self._ssdp = None
        await self._close()
        if self._notifiers:
            await asyncio.gather(*self._notifiers, return_exceptions=True)

    async def go_down(self) -> None:
        """Stop listening and drop open connections: clients get connection refused or reset."""
        await self._close()
        log.info("local Flamenco manager went down")

    async def come_back(self) -> None:
        """Listen again on the same port."""
        if self._runner is None:
            await self._listen()
            log.info("local Flamenco manager is back on %s", self.url)

    async def start_ssdp(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Answer SSDP searches on UDP ``host:port`` (0: any free port); answers that address as HOST:PORT."""
        responder = SsdpResponder(lambda: f"{self.url}/upnp/description.xml")
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: responder, local_addr=(host, port)
        )
        self._ssdp, self.ssdp_responder = transport, responder
        bound = transport.get_extra_info("sockname")
        return f"{bound[0]}:{bound[1]}"

    def count_requests(
        self, method: str | None = None, path_suffix: str = "", since: float = 0.0, worker_id: str | None = None
    ) -> int:
        """How many requests matched, received at or after ``since`` (time.monotonic())."""
        return sum(
            1
            for r in self.request_log
            if r.at >= since
            and (method is None or r.method == method)
            and r.path.endswith(path_suffix)
            and (worker_id is None or r.worker_id == worker_id)
        )

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._ssl else 'http'}://{host}:{self._port}"

    async def _listen(self) -> None:
        # A fresh app and runner each time: an aiohttp app cannot be set up again after cleanup.
        runner = web.AppRunner(self._make_app(), shutdown_timeout=0.0, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, reuse_address=True, ssl_context=self._ssl).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # shutdown_timeout=0: open connections are closed, not drained

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_PREVIEW_BYTES + 1024)
        # Route names are the spec's operationIds, so violations and logs can name the operation.
        add = app.router.add_route
        add("GET", "/api/v3/version", self._get_version, name="getVersion")
        add("GET", "/upnp/description.xml", self._ssdp_description, name="ssdpDescription")
        add("POST", "/api/v3/worker/register-worker", self._register_worker, name="registerWorker")
        add("POST", "/api/v3/worker/sign-on", self._sign_on, name="signOn")
        add("POST", "/api/v3/worker/sign-off", self._sign_off, name="signOff")
        add("GET", "/api/v3/worker/state", self._worker_state, name="workerState")
        add("POST", "/api/v3/worker/state-changed", self._state_changed, name="workerStateChanged")
        add("POST", "/api/v3/worker/task", self._schedule_task, name="scheduleTask")
        add("POST", "/api/v3/worker/task/{task_id}", self._task_update, name="taskUpdate")
        add("GET", "/api/v3/worker/task/{task_id}/may-i-run", self._may_i_run, name="mayWorkerRun")
        add(
            "POST",
            "/api/v3/worker/task/{task_id}/output-produced",
            self._output_produced,
            name="taskOutputProduced",
        )
        add("POST", "/local/jobs", self._local_submit, name="localSubmitJob")
        add("GET", "/local/jobs", self._local_jobs, name="localJobs")
        add("GET", "/local/jobs/{job_id}", self._local_job, name="localJob")
        add("GET", "/local/tasks/{task_id}/log", self._local_task_log, name="localTaskLog")
        add("GET", "/local/workers", self._local_workers, name="localWorkers")
        return app

    # ----- waiting, for tests -----

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until `predicate()` holds; it is checked again after every state change."""

        async def wait() -> None:
            async with self._changed_cond:
                await self._changed_cond.wait_for(predicate)

        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"condition {getattr(predicate, '__qualname__', predicate)} still false after {timeout} s; "
                f"manager state: {self.describe()}"
            ) from None

    def changed(self) -> None:
        """Wake up `wait_for` callers.  Notifying needs the condition's lock, hence a small task."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop running, so nobody can be waiting
        task = loop.create_task(self._notify())
        self._notifiers.add(task)
        task.add_done_callback(self._notifiers.discard)

    async def _notify(self) -> None:
        async with self._changed_cond:
            self._changed_cond.notify_all()

    def _assigned_task_json(self, task: TaskRecord) -> JSON:
        job = self.jobs[task.job_id]
        return {
            "uuid": task.id,
            "job": job.id,
            "name": task.name,
            "status": task.status,
            "priority": 50,
            "job_priority": job.priority,
            "job_type": job.job_type,
            "task_type": task.task_type,
            "commands": task.commands,
            "steps_completed": task.steps_completed,
            "steps_total": task.steps_total,
        }

    def _authenticate(self, request: web.Request) -> WorkerRecord:
        credentials = basic_auth(request)
        if credentials is None:
            raise _Reply(error_response(401, "missing or malformed HTTP basic auth (worker UUID and secret)"))
        worker = self.workers.get(credentials[0])
        if worker is None or worker.secret != credentials[1]:
            raise _Reply(error_response(401, f"unknown worker {credentials[0]!r} or wrong secret"))
        worker.last_seen = time.time()
        return worker

    def _task_from_path(self, request: web.Request) -> TaskRecord:
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            raise _Reply(error_response(404, f"no task {request.match_info['task_id']!r}"))
        return task

    @staticmethod
    async def _json_object(request: web.Request) -> JSON:
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError as ex:
            raise _Reply(error_response(400, f"request body is not valid JSON: {ex}"))
        if not isinstance(body, dict):
            raise _Reply(error_response(400, "request body must be a JSON object"))
        return body

    @staticmethod
    def _require(body: JSON, key: str, kind: type | tuple[type, ...]) -> Any:
        value = body.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise _Reply(error_response(400, f"field {key!r} is missing or has the wrong type: {value!r}"))
        return value

    # ----- middleware: replies, faults and spec checks -----

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        worker_login = (basic_auth(request) or ("", ""))[0]
        self.request_log.append(RequestRecord(time.monotonic(), request.method, request.path, worker_login))
        route = request.match_info.route.name or f"{request.method} {request.path}"
        if self.max_body_bytes is not None and (request.content_length or 0) > self.max_body_bytes:
            self.too_large_answers += 1
            self.changed()
            return web.Response(status=413, text="<html><h1>413 Request Entity Too Large</h1></html>",
                                content_type="text/html")
        checker = self._checker if request.path.startswith("/api/v3/") else None
        body = await request.read() if checker is not None else b""
        if checker is not None:
            self._record_violations(route, "request", checker.check_request(request, body))

        is_task_update = request.method == "POST" and bool(_TASK_UPDATE_PATH.match(request.path))
        fault = self.faults.pick(request.method, request.path, is_task_update)
        if fault is not None:
            status, headers = fault
            if request.match_info.route.name == "taskUpdate":
                self._record_rejected_update(request, status)
            log.info("%s: injected answer %d", route, status)
            # Injected answers are deliberate, so they are not checked against the spec.
            return error_response(status, "injected fault: the manager is pretending to fail", headers)

        try:
            response = await handler(request)
        except _Reply as reply:
            response = reply.response
        if checker is not None:
            problems = checker.check_response(request, body, response)
            self._record_violations(route, f"answer {response.status}", problems)
        return response

    def _record_violations(self, operation: str, what: str, problems: list[str]) -> None:
        for problem in problems:
            violation = f"{operation}: {what}: {problem}"
            log.warning("spec violation: %s", violation)
            self.spec_violations.append(violation)
        if problems:
            self.changed()

    def _record_rejected_update(self, request: web.Request, status: int) -> None:
        task = self.tasks.get(request.match_info["task_id"])
        worker_id = (basic_auth(request) or ("", ""))[0]
        if task is not None:
            task.rejected_updates.append(ReceivedUpdate(worker_id=worker_id, answer=status))
            self.changed()

    # ----- worker API -----

    async def _get_version(self, request: web.Request) -> web.Response:
        return web.json_response(MANAGER_VERSION)

    async def _ssdp_description(self, request: web.Request) -> web.Response:
        # The UPnP device description a Flamenco 3 Manager serves; workers only use its URL's host and port.
        body = (
            '<?xml version="1.0"?>\n<root xmlns="urn:schemas-upnp-org:device-1-0">'
            "<specVersion><major>1</major><minor>0</minor></specVersion>"
            f"<URLBase>{self.url}/</URLBase><device><deviceType>urn:flamenco:manager:0</deviceType>"
            f"<friendlyName>{MANAGER_VERSION['name']}</friendlyName><UDN>uuid:{SSDP_UUID}</UDN>"
            "</device></root>\n"
        )
        return web.Response(text=body, content_type="text/xml")

    async def _register_worker(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        worker = WorkerRecord(
            id=self.new_id(),
            name=self._require(body, "name", str),
            secret=self._require(body, "secret", str),
            platform=self._require(body, "platform", str),
            supported_task_types=[str(t) for t in self._require(body, "supported_task_types", list)],
            address=request.remote or "",
            software=str(body.get("software", "")),
        )
        self.workers[worker.id] = worker
        log.info("worker %s %r registered", worker.id, worker.name)
        self.changed()
        return web.json_response(self._registered_worker_json(worker))

    @staticmethod
    def _registered_worker_json(worker: WorkerRecord) -> JSON:
        return {
            "uuid": worker.id,
            "name": worker.name,
            "address": worker.address,
            "status": worker.status,
            "platform": worker.platform,
            "software": worker.software,
            "supported_task_types": worker.supported_task_types,
            "current_task": None,
        }

    async def _sign_on(self, request: web.Request) -> web.Response:
        worker = self._authenticate(request)
        body = await self._json_object(request)
        worker.name = self._require(body, "name", str)
        worker.supported_task_types = [str(t) for t in self._require(body, "supported_task_types", list)]
        worker.software = self._require(body, "software_version", str)
        worker.can_restart = bool(body.get("can_restart", False))
        worker.address = request.remote or worker.address
        # Like Flamenco: "starting" until the worker confirms the requested state through state-changed.
        worker.status = "starting"
        self.changed()
        return web.json_response({"status_requested": worker.status_requested or "awake"})

    async def _sign_off(self, request: web.Request) -> web.Response:
        worker = self._authenticate(request)
        worker.status = "offline"
        self.requeue_tasks_of(worker)
        self.changed()
        return web.Response(status=204)

    async def _worker_state(self, request: web.Request) -> web.Response:
        requested = self._authenticate(request).change_requested()
        if requested is None:
            return web.Response(status=204)
        return web.json_response({"status_requested": requested})

    async def _state_changed(self, request: web.Request) -> web.Response:
        worker = self._authenticate(request)
        status = self._require(await self._json_object(request), "status", str)
        if status not in WORKER_STATUSES:
            raise _Reply(error_response(400, f"unknown worker status {status!r}"))
        worker.status = status
        if worker.status_requested == status:
            worker.status_requested = None
        if status == "offline":
            self.requeue_tasks_of(worker)
        self.changed()
        return web.Response(status=204)

    async def _schedule_task(self, request: web.Request) -> web.Response:
        worker = self._authenticate(request)
        requested = worker.change_requested()
        if requested is not None:
            return web.json_response({"status_requested": requested}, status=423)
        if worker.status != "awake":
            return error_response(409, f"worker is {worker.status}, only awake workers get tasks")
        task = self.task_for(worker)
        if task is None:
            return web.Response(status=204)
        return web.json_response(self._assigned_task_json(task))

    async def _task_update(self, request: web.Request) -> web.Response:
        if self.update_delay:
            await asyncio.sleep(self.update_delay)
            if request.transport is None or request.transport.is_closing():
                return error_response(503, "the client went away while the update waited")
        worker = self._authenticate(request)
        task = self._task_from_path(request)
        body = await self._json_object(request)
        update = ReceivedUpdate(
            worker_id=worker.id,
            answer=204,
            task_status=body.get("taskStatus"),
            activity=body.get("activity"),
            log=body.get("log"),
            steps_completed=body.get("steps_completed"),
        )
        refusal = self.refuse_update(task, update)
        if refusal is not None:
            task.rejected_updates.append(attrs.evolve(update, answer=refusal[0]))
            self.changed()
            return error_response(*refusal)
        self.apply_update(task, update)
        return web.Response(status=204)

    async def _may_i_run(self, request: web.Request) -> web.Response:
        worker = self._authenticate(request)
        task = self._task_from_path(request)
        may, reason = self.may_keep_running(worker, task)
        change_requested = worker.change_requested() is not None
        answer = {"mayKeepRunning": may, "reason": reason, "statusChangeRequested": change_requested}
        return web.json_response(answer)

    async def _output_produced(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        task = self._task_from_path(request)
        if request.content_length is None:
            return error_response(411, "Content-Length is required")
        if request.content_type not in PREVIEW_TYPES:
            return error_response(415, f"cannot use {request.content_type!r}, send image/png or image/jpeg")
        if request.content_length > MAX_PREVIEW_BYTES:
            return error_response(413, f"at most {MAX_PREVIEW_BYTES} bytes, got {request.content_length}")
        task.preview = Preview(content_type=request.content_type, data=await request.read())
        task.previews_received += 1
        self.changed()
        return web.Response(status=202)

    # ----- local submission and inspection API -----

    async def _local_submit(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        tasks = self._require(body, "tasks", list)
        if not all(isinstance(t, dict) for t in tasks):
            return error_response(400, "every task must be a JSON object")
        job_id = self.submit_job(self._require(body, "name", str), tasks, str(body.get("job_type", "simple")))
        return web.json_response({"id": job_id})

    def _job_json(self, job: JobRecord) -> JSON:
        tasks = [
            {
                "id": t.id,
                "name": t.name,
                "task_type": t.task_type,
                "status": t.status,
                "activity": t.activity,
                "steps_completed": t.steps_completed,
                "steps_total": t.steps_total,
                "worker": t.worker_id,
                "log_lines": t.log_line_count,
            }
            for t in self.job_tasks(job.id)
        ]
        return {
            "id": job.id,
            "name": job.name,
            "job_type": job.job_type,
            "status": job.status,
            "tasks": tasks,
        }

    async def _local_jobs(self, request: web.Request) -> web.Response:
        return web.json_response([self._job_json(j) for j in self.jobs.values()])

    async def _local_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return error_response(404, f"no job {request.match_info['job_id']!r}")
        return web.json_response(self._job_json(job))

    async def _local_task_log(self, request: web.Request) -> web.Response:
        return web.Response(text=self._task_from_path(request).log)

    async def _local_workers(self, request: web.Request) -> web.Response:
        return web.json_response([self._registered_worker_json(w) for w in self.workers.values()])


async def _serve(host: str, port: int, validate_against: Path | None, seed: int, ssdp: str | None) -> None:
    manager = LocalManager(validate_against=validate_against, seed=seed)
    url = await manager.start(host, port)
    print(f"Local Flamenco manager listening on {url}", flush=True)
    if ssdp is not None:
        ssdp_host, _, ssdp_port = ssdp.rpartition(":")
        address = await manager.start_ssdp(ssdp_host, int(ssdp_port))
        print(f"answering UPnP/SSDP searches on {address} (FLAMENCO_WORKER_MANAGER_DISCOVERY_ADDRESS={address})",
              flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await manager.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the local Flamenco-compatible test manager.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--validate-against", type=Path, help="OpenAPI spec to check requests against")
    parser.add_argument("--seed", type=int, default=0, help="seed for ids and injected faults")
    parser.add_argument("--ssdp", metavar="HOST:PORT",
                        help="also answer UPnP/SSDP searches on this unicast UDP address, e.g. 127.0.0.1:1900")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(args.host, args.port, args.validate_against, args.seed, args.ssdp))


if __name__ == "__main__":
    main()
