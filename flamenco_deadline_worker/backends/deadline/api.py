"""boto3 clients for the worker API and CloudWatch Logs, run in threads, with the protocol's retry rules.

Throttling, internal errors and CONCURRENT_MODIFICATION are retried with exponential backoff that
honours Retry-After; connection errors are retried without limit, so an outage never ends the
agent.  Other answers raise ``ApiError`` for the caller to judge by the protocol.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import boto3
import botocore.credentials
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

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


class _SwappableCredentials(botocore.credentials.Credentials):
    """Credentials the agent replaces when it refreshes them; every client sees the new ones."""

    def __init__(self, access_key: str, secret_key: str, token: str | None) -> None:
        super().__init__(access_key, secret_key, token)
        self._frozen = botocore.credentials.ReadOnlyCredentials(access_key, secret_key, token)

    def swap(self, access_key: str, secret_key: str, token: str | None) -> None:
        self._frozen = botocore.credentials.ReadOnlyCredentials(access_key, secret_key, token)
        self.access_key, self.secret_key, self.token = access_key, secret_key, token

    def get_frozen_credentials(self) -> botocore.credentials.ReadOnlyCredentials:
        return self._frozen


class DeadlineApi:
    """The worker API and CloudWatch Logs clients, first on the host's credentials, then the fleet role's."""

    def __init__(self, region: str | None) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="boto3")
        self._config = Config(
            retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60, max_pool_connections=8
        )
        self._region = region
        self._bootstrap = boto3.Session(region_name=region)
        self._fleet_creds: _SwappableCredentials | None = None
        self.fleet_expiry: dt.datetime | None = None
        self.deadline = self._bootstrap.client("deadline", config=self._config)
        self.logs: Any = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def use_fleet_credentials(self, creds: Mapping[str, Any]) -> None:
        """Record AssumeFleetRoleForWorker credentials; every later call uses them."""
        self.fleet_expiry = creds["expiration"]
        if self._fleet_creds is not None:
            self._fleet_creds.swap(creds["accessKeyId"], creds["secretAccessKey"], creds["sessionToken"])
            return
        self._fleet_creds = _SwappableCredentials(creds["accessKeyId"], creds["secretAccessKey"], creds["sessionToken"])
        core = botocore.session.get_session()
        core._credentials = self._fleet_creds  # type: ignore[attr-defined]  # botocore keeps a session's credentials here; both clients share them
        session = boto3.Session(botocore_session=core, region_name=self._bootstrap.region_name)
        self.deadline = session.client("deadline", config=self._config)
        self.logs = session.client("logs", config=self._config)

    def fleet_credentials_due(self, margin: float = 20 * 60) -> bool:
        """True when the fleet credentials expire within ``margin`` seconds (the protocol asks >= 15 min)."""
        if self.fleet_expiry is None:
            return False
        return (self.fleet_expiry - dt.datetime.now(dt.timezone.utc)).total_seconds() < margin

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One attempt of ``operation`` in a thread: the answer, or Retryable, or ApiError."""
        client = self.logs if operation == "put_log_events" else self.deadline
        method: Callable[..., dict[str, Any]] = getattr(client, operation)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: method(**params))
        except ClientError as exc:
            raise classify(operation, exc) from None
        except (HTTPClientError, BotoConnectionError) as exc:
            raise Retryable(f"{operation}: cannot reach the service: {exc}", connection=True) from None

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
