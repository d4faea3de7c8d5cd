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
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import botocore.credentials
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from flamenco_deadline_worker import logs, records

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


# The operations this worker calls: botocore's models are cut down to them (and the shapes they
# use) as they load, and its endpoint table to these services, which saves ~18 MiB of parsed JSON.
OPERATIONS: dict[str, frozenset[str]] = {
    "deadline": frozenset(
        {
            "CreateWorker",
            "AssumeFleetRoleForWorker",
            "UpdateWorker",
            "UpdateWorkerSchedule",
            "BatchGetJobEntity",
            "AssumeQueueRoleForWorker",
            "DeleteWorker",
        }
    ),
    "logs": frozenset({"PutLogEvents"}),
}


def _undocumented(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in pairs if k != "documentation"}


_SPACE = re.compile(r"[ \t\n\r]*")
_SKIP = object()
_LEAN = json.JSONDecoder(object_pairs_hook=_undocumented)


def _scan_object(
    text: str, pos: int, on_member: Callable[[str, int], tuple[Any, int]]
) -> tuple[dict[str, Any], int]:
    """The JSON object at ``text[pos]``, member by member: ``on_member(key, value_pos)`` gives the
    value to keep (or ``_SKIP``) and where the value ends."""
    out: dict[str, Any] = {}
    if text[pos] != "{":
        raise ValueError(f"expected an object at {pos}")
    pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]  # matches the empty string
    if text[pos] == "}":
        return out, pos + 1
    while True:
        if text[pos] != '"':
            raise ValueError(f"expected a key at {pos}")
        key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        if text[pos] != ":":
            raise ValueError(f"expected ':' at {pos}")
        value, pos = on_member(key, _SPACE.match(text, pos + 1).end())  # type: ignore[union-attr]
        if value is not _SKIP:
            out[key] = value
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        if text[pos] == "}":
            return out, pos + 1
        if text[pos] != ",":
            raise ValueError(f"expected ',' or '}}' at {pos}")
        pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]


def _refs(node: Mapping[str, Any]) -> list[str]:
    """The shapes an operation or a shape refers to."""
    refs = [node.get("input"), node.get("output"), *node.get("errors", [])]
    refs += [node.get("member"), node.get("key"), node.get("value"), *node.get("members", {}).values()]
    return [ref["shape"] for ref in refs if isinstance(ref, dict) and "shape" in ref]


def lean_service_model(text: str, keep: frozenset[str]) -> dict[str, Any]:
    """The model in ``text`` with only the operations ``keep`` and the shapes they reach, without
    documentation.  Each operation and shape is decoded on its own and let go unless kept, so the
    whole model is never held in memory."""
    shape_at: dict[str, int] = {}
    shape_refs: dict[str, list[str]] = {}

    def operation(key: str, pos: int) -> tuple[Any, int]:
        value, end = _LEAN.raw_decode(text, pos)
        return (value if key in keep else _SKIP), end

    def shape(key: str, pos: int) -> tuple[Any, int]:
        value, end = _LEAN.raw_decode(text, pos)
        shape_at[key] = pos
        shape_refs[key] = _refs(value)
        return _SKIP, end

    def member(key: str, pos: int) -> tuple[Any, int]:
        if key == "operations":
            return _scan_object(text, pos, operation)
        if key == "shapes":
            return _scan_object(text, pos, shape)
        value, end = _LEAN.raw_decode(text, pos)
        return (_SKIP if key == "documentation" else value), end

    model, _ = _scan_object(text, _SPACE.match(text).end(), member)  # type: ignore[union-attr]
    wanted: set[str] = set()
    todo = [name for op in model.get("operations", {}).values() for name in _refs(op)]
    while todo:
        name = todo.pop()
        if name not in wanted and name in shape_at:
            wanted.add(name)
            todo += shape_refs[name]
    model["shapes"] = {name: _LEAN.raw_decode(text, shape_at[name])[0] for name in sorted(wanted)}
    return model


def lean_endpoints(text: str) -> dict[str, Any]:
    """endpoints.json with only the services this worker calls, each partition's other services
    decoded one at a time and let go."""

    def service(key: str, pos: int) -> tuple[Any, int]:
        value, end = _LEAN.raw_decode(text, pos)
        return (value if key in OPERATIONS else _SKIP), end

    def partition_member(key: str, pos: int) -> tuple[Any, int]:
        if key == "services":
            return _scan_object(text, pos, service)
        value, end = json.JSONDecoder().raw_decode(text, pos)
        return value, end

    def partitions(pos: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        if text[pos] != "[":
            raise ValueError(f"expected an array at {pos}")
        pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
        while text[pos] != "]":
            value, pos = _scan_object(text, pos, partition_member)
            out.append(value)
            pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
            if text[pos] == ",":
                pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
        return out, pos + 1

    def member(key: str, pos: int) -> tuple[Any, int]:
        if key == "partitions":
            return partitions(pos)
        value, end = json.JSONDecoder().raw_decode(text, pos)
        return value, end

    data, _ = _scan_object(text, _SPACE.match(text).end(), member)  # type: ignore[union-attr]
    return data


class _LeanJSONFileLoader(botocore.loaders.JSONFileLoader):
    """Keeps only what this worker uses of botocore's data while parsing it: the operations it calls
    (and the shapes they reach) of its two service models, without documentation, and the endpoints
    of those two services.  What is dropped is let go as it is decoded, so the full documents never
    sit in memory (measured: ~20 MiB less resident than two stock clients)."""

    def _load_file(self, full_path: str, open_method: Any) -> Any:
        name = os.path.basename(full_path)
        # .../data/<service>/<api version>/service-2.json[.gz]
        service = os.path.basename(os.path.dirname(os.path.dirname(full_path)))
        is_model = name.startswith("service-2.json") and service in OPERATIONS
        is_endpoints = name.startswith("endpoints.json")
        if not (is_model or is_endpoints):
            return super()._load_file(full_path, open_method)  # type: ignore[misc]  # private in the stubs
        if not os.path.isfile(full_path):
            return None
        with open_method(full_path, "rb") as fp:
            payload = fp.read().decode("utf-8")
        return lean_service_model(payload, OPERATIONS[service]) if is_model else lean_endpoints(payload)


class _WorkerLoader(botocore.loaders.Loader):
    """botocore's data loader with the lean file loader above."""

    FILE_LOADER_CLASS = _LeanJSONFileLoader


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

    def __init__(self, region: str | None) -> None:
        # Two threads: an UpdateWorkerSchedule and a PutLogEvents (or BatchGetJobEntity) at once.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="boto3")
        self._config = Config(
            retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60, max_pool_connections=4
        )
        session = botocore.session.Session()
        data_path = session.get_config_variable("data_path")
        paths = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)] if data_path else []
        session.register_component("data_loader", _WorkerLoader(extra_search_paths=paths))
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
        logs.add_secret(creds["secretAccessKey"])  # in case any message ever quotes them
        logs.add_secret(creds["sessionToken"])
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
        debug = records.log.isEnabledFor(logging.DEBUG)
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
