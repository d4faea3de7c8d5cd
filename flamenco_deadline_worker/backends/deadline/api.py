"""botocore (boto3's core) clients for the worker API and CloudWatch Logs, in threads, with the retry rules.

Throttling, internal errors and CONCURRENT_MODIFICATION are retried with exponential backoff that
honours Retry-After; connection errors are retried without limit, so an outage never ends the
agent.  Other answers raise ``ApiError`` for the caller to judge by the protocol.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import datetime as dt
import gc
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import botocore.credentials
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from flamenco_deadline_worker.backends.deadline import botodata
from flamenco_deadline_worker.core.hooks import AgentLog

log = logging.getLogger(__name__)

RETRYABLE_CODES = {
    "ThrottlingException",
    "InternalServerException",
    "InternalServerErrorException",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
}
MIN_BACKOFF = 0.2
MAX_BACKOFF = 30.0


class Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None, connection: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.connection = connection


class ApiError(Exception):
    """An answer the caller must judge: 400, 403, 404, 409 other than concurrent modification."""

    def __init__(self, operation: str, code: str, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(f"{operation}: {code} ({status}): {body.get('Error', {}).get('Message', '')}")
        self.operation = operation
        self.code = code
        self.status = status
        self.reason = str(body.get("reason", ""))
        self.resource_id = str(body.get("resourceId", ""))
        context = body.get("context") or {}
        self.context_status = str(context.get("status", ""))


class _WorkerCredentials(botocore.credentials.Credentials):
    """What every client signs with: the host's credentials (the default chain) until the fleet
    role's arrive, then those, swapped in place when they are refreshed.  No client is re-created."""

    def __init__(self, host: botocore.credentials.Credentials | None) -> None:
        super().__init__("", "", None, method="flamenco-deadline-worker")
        self._host = host
        self._frozen: botocore.credentials.ReadOnlyCredentials | None = None

    def swap(self, access_key: str, secret_key: str, token: str | None) -> None:
        self._frozen = botocore.credentials.ReadOnlyCredentials(access_key, secret_key, token)

    def get_frozen_credentials(self) -> botocore.credentials.ReadOnlyCredentials:
        if self._frozen is not None:
            return self._frozen
        if self._host is None:
            raise NoCredentialsError()
        frozen: botocore.credentials.ReadOnlyCredentials = self._host.get_frozen_credentials()
        return frozen

    def __repr__(self) -> str:  # never the keys, even by accident
        return f"<{type(self).__name__} {'fleet role' if self._frozen else 'host'}>"


class _Fixed(botocore.credentials.CredentialProvider):
    METHOD = "flamenco-deadline-worker"
    CANONICAL_NAME = "FlamencoDeadlineWorker"

    def __init__(self, creds: botocore.credentials.Credentials) -> None:
        super().__init__()
        self._creds = creds

    def load(self) -> botocore.credentials.Credentials:
        return self._creds


def default_models_parent() -> Path:
    """Where trimmed botocore models go when the caller names no directory: the user's cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "flamenco-deadline-worker"


def release_memory() -> None:
    """Give freed heap back to the system (after the models are loaded and trimmed)."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class DeadlineApi:
    """The worker API and CloudWatch Logs clients of one botocore session: two clients for the
    agent's whole life, first signing with the host's credentials, then with the fleet role's."""

    def __init__(self, region: str | None, agent_log: AgentLog, models_parent: Path | None = None) -> None:
        self.agent_log = agent_log
        # Two threads: an UpdateWorkerSchedule and a PutLogEvents (or BatchGetJobEntity) at once.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="boto3")
        self._config = Config(
            retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60, max_pool_connections=4
        )
        session = botocore.session.Session()
        # Models cut down to the operations this worker calls (see botodata), through botocore's
        # documented data path, after any the user set with AWS_DATA_PATH.  Never through the
        # environment: task processes would inherit it.
        trimmed = botodata.ensure_trimmed(models_parent or default_models_parent())
        if trimmed is not None:
            paths = [session.get_config_variable("data_path"), str(trimmed)]
            session.set_config_variable("data_path", os.pathsep.join(p for p in paths if p))
        resolver = session.get_component("credential_provider")
        self._creds = _WorkerCredentials(resolver.load_credentials())
        resolver.insert_before("env", _Fixed(self._creds))
        self._session = session
        self._region = region or session.get_config_variable("region")
        self.fleet_expiry: dt.datetime | None = None
        self.deadline: Any = session.create_client("deadline", region_name=self._region, config=self._config)
        self.logs: Any = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def use_fleet_credentials(self, creds: Mapping[str, Any]) -> None:
        """Record AssumeFleetRoleForWorker credentials; every later call of both clients uses them."""
        self.fleet_expiry = creds["expiration"]
        self.agent_log.hide(creds["secretAccessKey"])  # in case any message ever quotes them
        self.agent_log.hide(creds["sessionToken"])
        self._creds.swap(creds["accessKeyId"], creds["secretAccessKey"], creds["sessionToken"])
        if self.logs is None:
            self.logs = self._session.create_client("logs", region_name=self._region, config=self._config)
            release_memory()

    def fleet_credentials_due(self, margin: float = 20 * 60) -> bool:
        """True when the fleet credentials expire within ``margin`` seconds (the protocol asks >= 15 min)."""
        if self.fleet_expiry is None:
            return False
        return (self.fleet_expiry - dt.datetime.now(dt.timezone.utc)).total_seconds() < margin

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One attempt of ``operation`` in a thread: the answer, or Retryable, or ApiError.

        API Req/Resp records (debug level) name the operation, the URL, the parameters (log text
        and secrets left out) and the HTTP status; answers are never logged, as some carry credentials.
        """
        client = self.logs if operation == "put_log_events" else self.deadline
        method: Callable[..., dict[str, Any]] = getattr(client, operation)
        loop = asyncio.get_running_loop()
        records = self.agent_log
        debug = records.api_records_on()
        if debug:
            records.api_request(operation, client.meta.endpoint_url, _loggable(params))
        started = time.monotonic()
        try:
            answer = await loop.run_in_executor(self._pool, lambda: method(**params))
        except ClientError as exc:
            error = classify(operation, exc)
            if debug:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                records.api_response(operation, status, time.monotonic() - started, str(error))
            raise error from None
        except (HTTPClientError, BotoConnectionError) as exc:
            if debug:
                records.api_response(operation, "unreachable", time.monotonic() - started, type(exc).__name__)
            raise Retryable(f"{operation}: cannot reach the service: {exc}", connection=True) from None
        if debug:
            status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            records.api_response(operation, status, time.monotonic() - started)
        return answer

    async def call_retrying(
        self,
        operation: str,
        *,
        give_up_after: float | None = None,
        stop: asyncio.Event | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """``operation`` retried through throttling, internal errors and outages (forever by default)."""
        deadline = None if give_up_after is None else time.monotonic() + give_up_after
        delay = MIN_BACKOFF
        failures = 0
        while True:
            try:
                return await self.call(operation, **params)
            except Retryable as exc:
                failures += 1
                wait = backoff(delay, exc.retry_after)
                delay = min(MAX_BACKOFF, delay * 2)
                if deadline is not None and time.monotonic() + wait > deadline:
                    raise
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("%s (attempt %d); retrying in %.1f s", exc, failures, wait)
                if stop is not None:
                    try:
                        await asyncio.wait_for(stop.wait(), wait)
                        raise
                    except asyncio.TimeoutError:
                        pass
                else:
                    await asyncio.sleep(wait)


def _loggable(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a call as an API Req record shows them: log events counted, not copied."""
    shown = dict(params)
    if "logEvents" in shown:
        shown["logEvents"] = f"{len(shown['logEvents'])} event(s)"
    return shown


def backoff(delay: float, retry_after: float | None) -> float:
    wait = delay * random.uniform(0.8, 1.2)
    if retry_after is not None and retry_after > wait:
        wait = retry_after + random.uniform(0, 0.2 * max(retry_after, 0.1))
    return wait


def classify(operation: str, exc: ClientError) -> Exception:
    body: dict[str, Any] = dict(exc.response)
    code = str(body.get("Error", {}).get("Code", ""))
    meta = body.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode", 0))
    retry_after: float | None = None
    raw = body.get("retryAfterSeconds") or meta.get("HTTPHeaders", {}).get("retry-after")
    try:
        retry_after = float(raw) if raw is not None else None
    except ValueError:
        retry_after = None
    if (
        code in RETRYABLE_CODES
        or status >= 500
        or (code == "ConflictException" and body.get("reason") == "CONCURRENT_MODIFICATION")
    ):
        return Retryable(f"{operation}: {code or status}", retry_after)
    return ApiError(operation, code, status, body)
