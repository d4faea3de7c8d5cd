"""Flamenco 3 Manager client: the worker endpoints of the HTTP API, in the worker's own words."""

from __future__ import annotations

import asyncio
import base64
import logging
import platform
import secrets
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import attrs

from flamenco_deadline_worker import __version__
from flamenco_deadline_worker.config import WorkerConfig
from flamenco_deadline_worker.core.hooks import AgentLog
from flamenco_deadline_worker.core.model import (
    CommandSpec,
    Delivery,
    DeliveryResult,
    FatalServiceError,
    Head,
    NotAuthorised,
    RunPermission,
    ServiceUnavailable,
    StateChange,
    Task,
    Update,
    WorkerState,
)

log = logging.getLogger(__name__)

API = "/api/v3/worker"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10)
MAX_UPDATE_TIMEOUT = 600.0
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, asyncio.TimeoutError, aiohttp.ClientPayloadError)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import datetime

        when = parsedate_to_datetime(value)
        return max(0.0, (when - datetime.datetime.now(when.tzinfo)).total_seconds())
    except (TypeError, ValueError):
        return None


async def error_text(resp: aiohttp.ClientResponse) -> str:
    """The Manager's error message, or the start of the body, for a person to read."""
    try:
        body = await resp.text()
    except (aiohttp.ClientError, UnicodeDecodeError):
        return f"HTTP {resp.status}"
    message = body.strip()[:300]
    if resp.content_type == "application/json":
        try:
            data = await resp.json(content_type=None)
            if isinstance(data, dict) and "message" in data:
                message = str(data["message"])
        except ValueError:
            pass
    return f"HTTP {resp.status}: {message}" if message else f"HTTP {resp.status}"


async def json_body(resp: aiohttp.ClientResponse, what: str) -> Any:
    """The answer's JSON; anything else (a proxy's login or error page) is a retryable ServiceUnavailable."""
    try:
        return await resp.json(content_type=None)
    except (ValueError, UnicodeDecodeError):
        start = (await resp.text(errors="replace")).strip()[:120]
        raise ServiceUnavailable(
            f"{what} answered {resp.status} with a body that is not JSON ({resp.content_type}): {start!r}; "
            "is a proxy or login page in front of the Manager? Will retry."
        ) from None


def parse_task(data: Any) -> Task:
    """An AssignedTask answer as a Task.

    Without a usable ``uuid`` nothing can be reported, so that is a FatalServiceError.  Any other
    problem becomes a command that fails the task with a message, so the Manager hears about it.
    """
    if not isinstance(data, dict) or not isinstance(data.get("uuid"), str) or not data["uuid"]:
        raise FatalServiceError(f"task answer has no task uuid: {str(data)[:200]!r}")
    raw_commands = data.get("commands")
    commands: list[CommandSpec] = []
    if not isinstance(raw_commands, list):
        commands.append(CommandSpec(name=f"<task answer: 'commands' is {type(raw_commands).__name__}, not a list>",
                                    parameters={}))
        raw_commands = []
    for i, cmd in enumerate(raw_commands, start=1):
        if isinstance(cmd, dict):
            steps = cmd.get("total_step_count", 0)
            commands.append(
                CommandSpec(
                    name=str(cmd.get("name", "")),
                    parameters=cmd.get("parameters", {}),
                    total_step_count=steps if isinstance(steps, int) and steps >= 0 else 0,
                )
            )
        else:
            commands.append(CommandSpec(name=f"<command {i} is not an object>", parameters={}))
    return Task(
        id=data["uuid"],
        job_id=str(data.get("job", "unknown-job")),
        name=str(data.get("name", data["uuid"])),
        job_type=str(data.get("job_type", "")),
        task_type=str(data.get("task_type", "")),
        commands=tuple(commands),
        steps_total=_int(data.get("steps_total")),
        steps_completed=_int(data.get("steps_completed")),
        priority=_int(data.get("priority")),
        raw=data,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _summary(body: Any) -> Any:
    """A request body for the API Req record: long values (log text) shortened; secrets are hidden later."""
    if not isinstance(body, dict):
        return {} if body is None else {"body": f"<{type(body).__name__}>"}
    return {k: (v if len(str(v)) <= 200 else f"<{len(str(v))} chars>") for k, v in body.items()}


def _state(value: Any) -> WorkerState:
    try:
        return WorkerState(value)
    except ValueError:
        raise FatalServiceError(f"the Manager asked for unknown worker state {value!r}") from None


class FlamencoBackend:
    """Speaks to one Manager.  Credentials are created on first use and saved in the worker's config."""

    def __init__(
        self,
        config: WorkerConfig,
        agent_log: AgentLog,
        save_keys: Callable[[Mapping[str, str]], None],
        *,
        reregister: bool = False,
    ) -> None:
        self.config = config
        self.records = agent_log
        self._save_keys = save_keys  # into the worker's config file (0600)
        self.base_url = config.manager_url.rstrip("/")
        self.worker_id = config.worker_id
        self._secret = config.worker_secret
        self._force_register = reregister
        self._session: aiohttp.ClientSession | None = None
        self.initial_state = WorkerState.AWAKE
        self._loaded = False
        self._update_timeout = config.update_timeout_seconds
        self.last_update_delivered = 0.0  # monotonic time of the last task update the Manager took

    # ---- plumbing ----------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.config.tls_ca_file:
            return True  # aiohttp verifies against the system store
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(self.config.tls_ca_file)
        return ctx

    def _tls_problem(self, exc: aiohttp.ClientConnectorCertificateError) -> str:
        """What is wrong with the Manager's certificate, and what to do about it."""
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "verify_message", "") or str(cert_error)
        if getattr(cert_error, "verify_code", None) in (62, 64):  # X509_V_ERR_HOSTNAME_/IP_ADDRESS_MISMATCH
            advice = "use the host name the certificate was issued for in manager_url"
        else:
            trusted = f"tls_ca_file {self.config.tls_ca_file} and " if self.config.tls_ca_file else ""
            advice = (f"it is not signed by a CA in {trusted}the system store; set tls_ca_file to the CA that "
                      "signed it")
        return f"TLS certificate refused ({reason}): {advice}; nothing is sent to an unverified Manager"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=8)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=REQUEST_TIMEOUT,
                headers={"User-Agent": f"flamenco-deadline-worker/{__version__}"},
            )
        return self._session

    def _auth_header(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.worker_id}:{self._secret}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    async def _request(
        self, method: str, path: str, *, json: Any = None, auth: bool = True, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        url = f"{self.base_url}{API}{path}"
        headers = {**kwargs.pop("headers", {}), **(self._auth_header() if auth else {})}
        operation = f"{method} {path}"
        records = self.records
        records.api_request(operation, url, _summary(json))
        started = time.monotonic()
        try:
            resp = await self.session.request(method, url, json=json, headers=headers, **kwargs)
            await resp.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            records.api_response(operation, "no answer", time.monotonic() - started, f"{type(exc).__name__}: {exc}")
            raise ServiceUnavailable(f"{method} {url}: {self._tls_problem(exc)}") from None
        except CONNECTION_ERRORS as exc:
            records.api_response(operation, "no answer", time.monotonic() - started, f"{type(exc).__name__}: {exc}")
            failure = ServiceUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}")
            failure.timed_out = isinstance(exc, asyncio.TimeoutError)
            raise failure from None
        records.api_response(
            operation, resp.status, time.monotonic() - started, await error_text(resp) if resp.status >= 400 else ""
        )
        if resp.status in (401, 403):
            raise NotAuthorised(f"{method} {path}: {await error_text(resp)}")
        if resp.status >= 500 or resp.status == 429:
            raise ServiceUnavailable(
                f"{method} {path}: {await error_text(resp)}", retry_after_seconds(resp.headers)
            )
        return resp

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- registration and sign-on -------------------------------------------------------------

    async def register(self) -> None:
        secret = secrets.token_urlsafe(32)
        body = {
            "name": self.config.worker_name,
            "secret": secret,
            "platform": platform.system().lower(),
            "supported_task_types": list(self.config.task_types),
        }
        resp = await self._request("POST", "/register-worker", json=body, auth=False)
        if resp.status != 200:
            raise FatalServiceError(f"registration refused: {await error_text(resp)}")
        data = await json_body(resp, "registration")
        if not isinstance(data, dict) or not isinstance(data.get("uuid"), str):
            raise FatalServiceError(f"registration answer has no worker uuid: {str(data)[:200]}")
        self.records.hide(secret)
        self.worker_id, self._secret = data["uuid"], secret
        self._save_keys({"worker_id": self.worker_id, "worker_secret": secret})
        self.records.worker_create(self.worker_id, self.base_url, worker_name=self.config.worker_name)
        self.records.filesystem("Write", self.config.home_config, "worker credentials saved (mode 0600)")
        log.info("registered as worker %s; credentials saved in %s", self.worker_id, self.config.home_config)

    async def start(self) -> None:
        """Register when needed (or asked), then sign on; re-register once when refused."""
        if self._force_register or not (self.worker_id and self._secret):
            if self.worker_id and self._force_register:
                self.records.worker_delete(self.worker_id, "--reregister: replacing the saved credentials")
            await self.register()
            self._force_register = False
        elif not self._loaded:
            self._loaded = True
            self.records.worker_load(self.worker_id, self.config.source_of("worker_id"))
        try:
            await self._sign_on()
        except NotAuthorised as exc:
            log.warning("the Manager refused our credentials (%s); registering again", exc)
            self.records.worker_delete(self.worker_id, f"the Manager refused these credentials: {exc}")
            await self.register()
            await self._sign_on()

    async def _sign_on(self) -> None:
        body = {
            "name": self.config.worker_name,
            "supported_task_types": list(self.config.task_types),
            "software_version": __version__,
            "can_restart": True,
        }
        resp = await self._request("POST", "/sign-on", json=body)
        if resp.status != 200:
            raise FatalServiceError(f"sign-on refused: {await error_text(resp)}")
        data = await json_body(resp, "sign-on")
        self.initial_state = _state(data.get("status_requested", "awake") if isinstance(data, dict) else None)
        log.info("signed on to %s as %s (%s)", self.base_url, self.config.worker_name, self.worker_id)

    async def sign_off(self) -> None:
        resp = await self._request("POST", "/sign-off")
        if resp.status != 204:
            log.warning("sign-off answered %s", await error_text(resp))

    # ---- state ----------------------------------------------------------------------------------

    async def requested_state(self) -> WorkerState | None:
        resp = await self._request("GET", "/state")
        if resp.status == 204:
            return None
        if resp.status != 200:
            raise FatalServiceError(f"state query answered {await error_text(resp)}")
        data = await json_body(resp, "the state query")
        return _state(data.get("status_requested") if isinstance(data, dict) else None)

    async def state_changed(self, state: WorkerState) -> None:
        resp = await self._request("POST", "/state-changed", json={"status": state.value})
        if resp.status != 204:
            raise FatalServiceError(f"state-changed answered {await error_text(resp)}")

    # ---- tasks ----------------------------------------------------------------------------------

    async def fetch_task(self) -> Task | StateChange | None:
        resp = await self._request("POST", "/task")
        if resp.status == 204:
            return None
        if resp.status == 200:
            return parse_task(await json_body(resp, "the task request"))
        if resp.status == 423:
            data = await json_body(resp, "the task request")
            return StateChange(_state(data.get("status_requested") if isinstance(data, dict) else None))
        if resp.status == 409:
            # Not in a state that may run tasks: ask which one the Manager wants.
            wanted = await self.requested_state()
            return StateChange(wanted or WorkerState.AWAKE)
        raise FatalServiceError(f"task request answered {await error_text(resp)}")

    async def may_keep_running(self, task_id: str) -> RunPermission:
        resp = await self._request("GET", f"/task/{task_id}/may-i-run")
        if resp.status != 200:
            raise FatalServiceError(f"may-i-run answered {await error_text(resp)}")
        data = await json_body(resp, "may-i-run")
        if not isinstance(data, dict):
            raise FatalServiceError(f"may-i-run answer is not an object: {str(data)[:200]}")
        return RunPermission(
            may_keep_running=bool(data.get("mayKeepRunning", True)),
            reason=str(data.get("reason", "")),
            state_change_requested=bool(data.get("statusChangeRequested", False)),
        )

    # ---- task updates (the TaskUpdateQueue's sink) ----------------------------------------------

    max_log_lines: int | None = None

    def batch_key(self, task_id: str) -> str:
        return task_id  # one call per task: a slow POST holds up only its own task

    async def deliver(self, heads: Sequence[Head]) -> list[DeliveryResult]:
        return [await self._deliver_head(head) for head in heads]

    async def _deliver_head(self, head: Head) -> DeliveryResult:
        for index, update in enumerate(head.updates):
            result = await self._post_update(update)
            if result.outcome is not Delivery.DELIVERED:
                return attrs.evolve(result, delivered=index)
        return DeliveryResult.ok(len(head.updates))

    async def _post_update(self, update: Update) -> DeliveryResult:
        body: dict[str, Any] = {}
        if update.status is not None:
            body["taskStatus"] = update.status
        if update.activity is not None:
            body["activity"] = update.activity
        if update.log:
            body["log"] = update.log
        if update.steps_completed is not None:
            body["steps_completed"] = update.steps_completed
        timeout = aiohttp.ClientTimeout(total=self._update_timeout, connect=10)
        try:
            resp = await self._request("POST", f"/task/{update.task_id}", json=body, timeout=timeout)
        except ServiceUnavailable as exc:
            if exc.timed_out:
                # A Manager slower than our patience would never get the update: be more patient.
                self._update_timeout = min(max(MAX_UPDATE_TIMEOUT, self.config.update_timeout_seconds),
                                           self._update_timeout * 2)
            return DeliveryResult(Delivery.RETRY, reason=str(exc), retry_after=exc.retry_after)
        except NotAuthorised as exc:
            # Credentials can be fixed (re-registration); the update must survive that.
            return DeliveryResult(Delivery.RETRY, reason=str(exc))
        self._update_timeout = self.config.update_timeout_seconds
        if resp.status in (200, 204):
            self.last_update_delivered = time.monotonic()
            return DeliveryResult.ok(1)
        if resp.status in (404, 409):
            return DeliveryResult(Delivery.TASK_GONE, reason=await error_text(resp))
        if resp.status == 413:
            return DeliveryResult(Delivery.TOO_LARGE, reason=await error_text(resp))
        return DeliveryResult(Delivery.REJECTED, reason=await error_text(resp))

    async def output_produced(self, task_id: str, path: str, content_type: str, body: bytes) -> None:
        resp = await self._request(
            "POST", f"/task/{task_id}/output-produced", data=body, headers={"Content-Type": content_type}
        )
        if resp.status not in (200, 202, 204):
            log.info("preview of %s not taken by the Manager: %s", path, await error_text(resp))
