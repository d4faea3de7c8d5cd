"""The HTTP face of the emulator: rest-json for deadline, JSON 1.1 for CloudWatch Logs.

``DeadlineEmulator`` runs the aiohttp server on 127.0.0.1 in a thread of its own, so a test (or
the benchmark) can drive clients and read the state from its main thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
from aiohttp import web
from botocore.model import OperationModel

from flamenco_deadline_worker.testing.deadline_emulator import model
from flamenco_deadline_worker.testing.deadline_emulator.job import Job
from flamenco_deadline_worker.testing.deadline_emulator.state import Options, ServiceError, ServiceState, conflict
from flamenco_deadline_worker.testing.threaded_server import ThreadedServer

log = logging.getLogger(__name__)
T = TypeVar("T")

_HANDLERS = {
    "CreateWorker": ServiceState.create_worker,
    "AssumeFleetRoleForWorker": ServiceState.assume_fleet_role,
    "UpdateWorker": ServiceState.update_worker,
    "UpdateWorkerSchedule": ServiceState.update_worker_schedule,
    "BatchGetJobEntity": ServiceState.batch_get_job_entity,
    "AssumeQueueRoleForWorker": ServiceState.assume_queue_role,
    "DeleteWorker": ServiceState.delete_worker,
}
_KEY = re.compile(r"Credential=([^/,\s]+)/")


@attrs.define
class Faults:
    """Answers the emulator gives instead of serving a request."""

    throttle_rate: float = 0.0  # share of requests answered 429 ThrottlingException
    error_rate: float = 0.0  # share answered 500 InternalServerException
    retry_after: int | None = None  # Retry-After seconds on those answers
    operations: frozenset[str] | None = None  # None: every operation
    scripted: list[tuple[str, ServiceError]] = attrs.field(factory=list)  # (operation, error), used once
    seed: int = 1
    # Share of UpdateWorkerSchedule calls applied and then answered 500, as if the answer were lost on
    # the way back: the worker cannot know whether its updates were accepted.
    lost_answer_rate: float = 0.0
    lost_answers: int = 0  # the next this many UpdateWorkerSchedule answers are lost so, before the rate

    def lose_answer(self, rng: random.Random) -> bool:
        if self.lost_answers > 0:
            self.lost_answers -= 1
            return True
        return self.lost_answer_rate > 0 and rng.random() < self.lost_answer_rate

    def pick(self, operation: str, rng: random.Random) -> ServiceError | None:
        for i, (op, error) in enumerate(self.scripted):
            if op == operation:
                del self.scripted[i]
                return error
        if self.operations is not None and operation not in self.operations:
            return None
        roll = rng.random()
        if roll < self.throttle_rate:
            return ServiceError("ThrottlingException", "Rate exceeded (injected)", retry_after=self.retry_after)
        if roll < self.throttle_rate + self.error_rate:
            code = "ServiceUnavailableException" if operation == "PutLogEvents" else "InternalServerException"
            return ServiceError(code, "Internal failure (injected)", retry_after=self.retry_after)
        return None


_STATUS = {
    "ThrottlingException": 429,
    "InternalServerException": 500,
    "ConflictException": 409,
    "ResourceNotFoundException": 404,
    "AccessDeniedException": 403,
    "ValidationException": 400,
}


class DeadlineEmulator(ThreadedServer):
    """A local Deadline Cloud worker API and CloudWatch Logs endpoint for one job.

    ``latency_ms`` delays every answer (each call on its own, so concurrent calls overlap) by that
    much plus a uniform ``0..jitter_ms``, as the real service's round trip of tens of ms would.
    """

    name = "Deadline emulator"

    def __init__(
        self,
        job: Job,
        options: Options | None = None,
        faults: Faults | None = None,
        port: int = 0,
        *,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
    ) -> None:
        if latency_ms < 0 or jitter_ms < 0:
            raise ValueError(f"latency_ms ({latency_ms}) and jitter_ms ({jitter_ms}) must not be negative")
        super().__init__(port)
        self.state = ServiceState(job, options)
        self.faults = faults or Faults()
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self.requests: list[tuple[float, str, int]] = []  # (time, operation, status)
        self._rng = random.Random(self.faults.seed)
        self._jitter_rng = random.Random(self.faults.seed + 1)  # its own, so faults stay reproducible
        self._scheduling: set[str] = set()  # workers with an UpdateWorkerSchedule being answered

    # ---- lifecycle -------------------------------------------------------------------------

    def client_env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and a worker agent) at this emulator."""
        return {
            "AWS_ENDPOINT_URL_DEADLINE": self.url,
            "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": self.url,
            "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
            "AWS_ACCESS_KEY_ID": "AKIABOOTSTRAPEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "bootstrap-secret",
            "AWS_DEFAULT_REGION": "us-west-2",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def go_down(self) -> None:
        """Stop listening and drop every connection, as an outage would."""
        self._call(self._down())

    def come_back(self) -> None:
        """Listen again on the same port."""
        self._call(self._up())

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    # ---- helpers for tests -----------------------------------------------------------------

    def read(self, fn: Callable[[ServiceState], T]) -> T:
        with self.state.lock:
            return fn(self.state)

    def wait_for(self, predicate: Callable[[ServiceState], Any], timeout: float = 60.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = self.read(predicate)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)

    def schedule_call_open(self, worker_id: str) -> bool:
        """Whether an UpdateWorkerSchedule of ``worker_id`` is being answered."""
        return worker_id in self._scheduling

    # ---- requests --------------------------------------------------------------------------

    async def _delay(self) -> None:
        delay_ms = self.latency_ms + (self._jitter_rng.uniform(0, self.jitter_ms) if self.jitter_ms else 0.0)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)

    async def _handle(self, request: web.Request) -> web.Response:
        found = model.match_route(request.method, request.path)
        worker = found[1].get("workerId") if found is not None and found[0].name == "UpdateWorkerSchedule" else None
        if worker is None:
            return await self._answer(request, found)
        if worker in self._scheduling:
            # One UpdateWorkerSchedule per worker at a time, as the service's CONCURRENT_MODIFICATION
            # conflict says: the second is refused (after the same delay) and changes nothing.
            await request.read()
            await self._delay()
            with self.state.lock:
                self.state.concurrent_schedule_calls += 1
            return self._error("UpdateWorkerSchedule", conflict("CONCURRENT_MODIFICATION", worker, "worker"))
        self._scheduling.add(worker)
        try:
            return await self._answer(request, found)
        finally:
            self._scheduling.discard(worker)

    async def _answer(self, request: web.Request, found: tuple[OperationModel, dict[str, str]] | None) -> web.Response:
        """``found``: the operation and path parameters the request's route names (None: no such route)."""
        target = request.headers.get("X-Amz-Target", "")
        raw = await request.read()
        await self._delay()
        key_match = _KEY.search(request.headers.get("Authorization", ""))
        key = key_match.group(1) if key_match else ""
        if target.startswith(model.LOGS.metadata["targetPrefix"] + "."):
            return self._logs(target.split(".", 1)[1], raw, key)
        if found is None:
            return self._error(
                None, ServiceError("UnknownOperationException", f"{request.method} {request.path} is not emulated"), 404
            )
        op, path_params = found
        try:
            body = json.loads(raw) if raw else None
            params = model.rest_json_params(op, path_params, request.query, request.headers, body)
        except (ValueError, model.RequestInvalid) as exc:
            return self._error(op.name, ServiceError("ValidationException", str(exc), reason="OTHER"))
        problems = model.check(op.input_shape, params) if op.input_shape is not None else []
        if problems:
            log.warning("%s: invalid request: %s", op.name, problems)
            return self._error(
                op.name, ServiceError("ValidationException", "; ".join(problems), reason="FIELD_VALIDATION_FAILED")
            )
        fault = self.faults.pick(op.name, self._rng)
        if fault is not None:
            return self._error(op.name, fault)
        try:
            with self.state.lock:
                self.state.calls.append((op.name, key))
                result = _HANDLERS[op.name](self.state, params, key)
                lost = op.name == "UpdateWorkerSchedule" and self.faults.lose_answer(self._rng)
                if op.name == "UpdateWorkerSchedule":
                    self.state.schedule_answered(params["workerId"], delivered=not lost)
        except ServiceError as exc:
            return self._error(op.name, exc)
        if lost:
            lost_error = ServiceError("InternalServerException", "Answer lost (injected, after applying)")
            return self._error(op.name, lost_error)
        problems = model.check(op.output_shape, result) if op.output_shape is not None else []
        if problems:
            raise AssertionError(f"the emulator's own {op.name} answer is invalid: {problems}")
        body_out = model.to_wire(op.output_shape, result) if op.output_shape is not None else {}
        self.requests.append((time.time(), op.name, 200))
        return web.json_response(body_out)

    def _error(self, op_name: str | None, error: ServiceError, status: int | None = None) -> web.Response:
        status = status or _STATUS.get(error.code, 400)
        headers = {"x-amzn-ErrorType": error.code}
        if error.retry_after is not None:
            headers["Retry-After"] = str(error.retry_after)
        self.requests.append((time.time(), op_name or "?", status))
        return web.json_response(error.fields, status=status, headers=headers)

    def _logs(self, op_name: str, raw: bytes, key: str) -> web.Response:
        def answer(body: Mapping[str, Any], status: int = 200) -> web.Response:
            self.requests.append((time.time(), op_name, status))
            return web.Response(
                body=json.dumps(body).encode(), status=status, content_type="application/x-amz-json-1.1"
            )

        if op_name not in model.LOGS_OPERATIONS:
            return answer({"__type": "UnknownOperationException", "message": f"{op_name} is not emulated"}, 400)
        op = model.LOGS.operation_model(op_name)
        try:
            params = json.loads(raw)
        except ValueError as exc:
            return answer({"__type": "SerializationException", "message": str(exc)}, 400)
        problems = model.check(op.input_shape, params) if op.input_shape is not None else []
        if problems:
            log.warning("%s: invalid request: %s", op_name, problems)
            return answer({"__type": "InvalidParameterException", "message": "; ".join(problems)}, 400)
        fault = self.faults.pick(op_name, self._rng)
        if fault is not None:
            status = 500 if fault.code == "ServiceUnavailableException" else 400
            return answer({"__type": fault.code, **fault.fields}, status)
        try:
            with self.state.lock:
                self.state.calls.append((op_name, key))
                result = self.state.put_log_events(params, key, time.monotonic())
        except ServiceError as exc:
            return answer({"__type": exc.code, **exc.fields}, 400)
        return answer(result)


def start_emulator(job: Job, options: Options | None = None, faults: Faults | None = None) -> DeadlineEmulator:
    return DeadlineEmulator(job, options, faults).start()
