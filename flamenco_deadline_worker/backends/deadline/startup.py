"""Worker start and stop as the protocol states them: CreateWorker, AssumeFleetRoleForWorker, UpdateWorker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from flamenco_deadline_worker.backends.deadline.api import ApiError, DeadlineApi, Retryable, backoff
from flamenco_deadline_worker.taskenv import HOST_CREDENTIAL_VARIABLES

log = logging.getLogger(__name__)


class StartupFailed(Exception):
    """The service refused this worker in a way retrying cannot fix: the agent exits."""


def host_properties() -> dict[str, object]:
    name = socket.gethostname()
    props: dict[str, object] = {"hostName": "".join(c if c.isalnum() or c in "_.-" else "-" for c in name)[:255]}
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)})
        props["ipAddresses"] = {"ipV4Addresses": [str(a) for a in addresses if not str(a).startswith("127.")][:10]}
    except OSError:
        pass
    return props




def hide_host_credentials() -> None:
    """Take the host's credential variables out of this process's environment once the clients hold
    them: task processes inherit the environment, and the host's credentials must never reach them
    (they would also win over the queue role's profile)."""
    hidden = [name for name in HOST_CREDENTIAL_VARIABLES if os.environ.pop(name, None) is not None]
    if hidden:
        log.info("host credentials taken out of the environment task processes inherit: %s", ", ".join(hidden))


def load_worker_id(state_file: Path, farm_id: str, fleet_id: str) -> str | None:
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    if state.get("farm_id") == farm_id and state.get("fleet_id") == fleet_id:
        return str(state["worker_id"])
    return None


def save_worker_id(state_file: Path, farm_id: str, fleet_id: str, worker_id: str) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"farm_id": farm_id, "fleet_id": fleet_id, "worker_id": worker_id}))
    tmp.replace(state_file)


async def create_worker(api: DeadlineApi, farm_id: str, fleet_id: str) -> str:
    delay = 0.5
    while True:
        try:
            answer = await api.call_retrying(
                "create_worker", farmId=farm_id, fleetId=fleet_id, hostProperties=host_properties()
            )
            return str(answer["workerId"])
        except ApiError as exc:
            if (
                exc.code == "ConflictException"
                and exc.reason == "STATUS_CONFLICT"
                and exc.resource_id == fleet_id
                and exc.context_status == "CREATE_IN_PROGRESS"
            ):
                wait = backoff(delay, None)
                delay = min(30.0, delay * 2)
                log.info("fleet %s is still being created; CreateWorker again in %.1f s", fleet_id, wait)
                await asyncio.sleep(wait)
                continue
            raise StartupFailed(f"CreateWorker failed: {exc}") from None


async def assume_fleet_role(api: DeadlineApi, ids: dict[str, Any]) -> None:
    try:
        answer = await api.call_retrying("assume_fleet_role_for_worker", **ids)
    except ApiError as exc:
        raise StartupFailed(f"AssumeFleetRoleForWorker failed: {exc}") from None
    api.use_fleet_credentials(answer["credentials"])


async def set_started(
    api: DeadlineApi, ids: dict[str, Any], capabilities: dict[str, Any] | None = None
) -> dict[str, Any]:
    """UpdateWorker STARTED, with the host's ``capabilities`` (WorkerCapabilities) when given (the
    service keeps the last ones sent, so a later STARTED without them leaves them as they are); its
    answer (the agent log's CloudWatch stream is in ``log``)."""
    extra: dict[str, Any] = {"capabilities": capabilities} if capabilities else {}
    delay = 0.5
    while True:
        try:
            return await api.call_retrying(
                "update_worker", **ids, status="STARTED", hostProperties=host_properties(), **extra
            )
        except ApiError as exc:
            if (
                exc.code == "ConflictException"
                and exc.reason == "STATUS_CONFLICT"
                and exc.context_status in ("STOPPING", "NOT_COMPATIBLE")
            ):
                log.info("worker is %s in the service; setting it STOPPED before STARTED", exc.context_status)
                await set_status(api, ids, "STOPPED", budget=None)
            elif exc.code == "ConflictException" and exc.context_status == "ASSOCIATED":
                log.info("worker is still associated; retrying UpdateWorker STARTED")
            else:
                raise StartupFailed(f"UpdateWorker STARTED failed: {exc}") from None
        wait = backoff(delay, None)
        delay = min(30.0, delay * 2)
        await asyncio.sleep(wait)


async def set_status(api: DeadlineApi, ids: dict[str, Any], status: str, budget: float | None) -> bool:
    """UpdateWorker ``status``, retried until it succeeds or ``budget`` seconds pass; True on success."""
    deadline = None if budget is None else time.monotonic() + budget
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        try:
            await api.call_retrying("update_worker", give_up_after=remaining, **ids, status=status)
            return True
        except Retryable as exc:
            log.warning("UpdateWorker %s did not get through in time: %s", status, exc)
            return False
        except ApiError as exc:
            log.warning("UpdateWorker %s: %s; going on (the protocol says not to retry this)", status, exc)
            return True


async def delete_worker(api: DeadlineApi, ids: dict[str, Any]) -> bool:
    """DeleteWorker (setting the worker STOPPED first if the service asks for it); True when deleted."""
    for _ in range(2):
        try:
            await api.call_retrying("delete_worker", give_up_after=30, **ids)
            log.info("deleted worker %s", ids["workerId"])
            return True
        except ApiError as exc:
            if exc.code == "ConflictException" and exc.reason == "STATUS_CONFLICT":
                await set_status(api, ids, "STOPPED", budget=30)
                continue
            log.warning("DeleteWorker: %s; going on", exc)
            return False
        except Retryable as exc:
            log.warning("DeleteWorker did not get through: %s", exc)
            return False
    return False
