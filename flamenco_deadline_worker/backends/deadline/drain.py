"""Why the worker drains, and the watch on IMDS for the EC2 notices that start a regular drain.

Regular drains (the worker API contract's Worker-Initiated Drain, "regular"): the service's
``desiredWorkerStatus=STOPPED``, an EC2 spot interruption notice (the host goes away at a known
time) or a rebalance recommendation (no time given).  The running action may finish; queued
actions other than ``envExit`` are NEVER_ATTEMPTED.  Once less than ``EXPEDITE_MARGIN`` seconds
are left before a spot interruption, the drain turns expedited (as a signal's is at once): what
still runs is INTERRUPTED.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import attrs

from flamenco_deadline_worker.backends.deadline.imds import ImdsClient
from flamenco_deadline_worker.backends.deadline.timestamps import parse_iso

log = logging.getLogger(__name__)

EXPEDITE_MARGIN = 10.0  # the contract: under 10 s left, a regular drain becomes an expedited one
POLL_SECONDS = 1.0  # how often IMDS is asked (the AWS agent asks every second too)
SPOT_PATH = "spot/instance-action"
REBALANCE_PATH = "events/recommendations/rebalance"
NO_DRAIN: dict[str, Any] = {"kind": "none"}

WHY = {
    "service": "the service asked the worker to stop (desiredWorkerStatus=STOPPED)",
    "spot": "EC2 spot interruption notice",
    "rebalance": "EC2 rebalance recommendation",
    "expedited": "a signal (SIGTERM/SIGINT)",
}


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define
class Drain:
    kind: str  # service, spot, rebalance, expedited
    since: float = attrs.field(factory=time.time)
    deadline: float | None = None  # when the host goes away (a spot interruption's time)
    detail: str = ""
    mode: str = "regular"  # regular, or expedited once time runs short (or for a signal)

    def describe(self) -> str:
        text = WHY[self.kind]
        if self.deadline is not None:
            text += f": the host goes away at {iso(self.deadline)}"
        return text + (f" ({self.detail})" if self.detail else "")

    def status(self) -> dict[str, Any]:
        """For ``flamenco-worker status``."""
        return {
            "kind": self.kind,
            "mode": self.mode,
            "since": iso(self.since),
            "deadline": iso(self.deadline),
            "message": self.describe(),
        }

    def seconds_left(self, now: float | None = None) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - (time.time() if now is None else now)

    def urgent(self, other: Drain | None) -> bool:
        """True when this drain should replace ``other``: there was none, or this one must end sooner."""
        if other is None:
            return True
        if self.deadline is None:
            return False
        return other.deadline is None or self.deadline < other.deadline


def _parse_time(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_iso(text).timestamp()
    except ValueError:
        return None


def _json_object(path: str, text: str) -> dict[str, Any] | None:
    """An IMDS answer as a JSON object; None (with a warning when it is not JSON at all) otherwise."""
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("IMDS %s: not JSON: %.200r", path, text)
        return None
    return data if isinstance(data, dict) else None


def spot_notice(text: str) -> Drain | None:
    """A ``spot/instance-action`` answer: ``{"action": "terminate", "time": "2026-...Z"}``."""
    data = _json_object(SPOT_PATH, text)
    if data is None:
        return None
    action = data.get("action")
    if action not in ("stop", "terminate", "hibernate"):
        return None
    deadline = _parse_time(data.get("time"))
    if deadline is None:
        log.warning("IMDS %s names no valid time (%r); draining with 2 minutes left", SPOT_PATH, data.get("time"))
        deadline = time.time() + 120
    return Drain("spot", deadline=deadline, detail=f"action {action}")


def rebalance_notice(text: str) -> Drain | None:
    """An ``events/recommendations/rebalance`` answer: ``{"noticeTime": "2026-...Z"}``."""
    data = _json_object(REBALANCE_PATH, text)
    if data is None or "noticeTime" not in data:
        return None
    return Drain("rebalance", detail=f"notice time {data['noticeTime']}")


class NoticeWatch:
    """Asks IMDS every ``interval`` seconds for a spot interruption and a rebalance recommendation;
    hands each new notice to ``on_notice`` (a rebalance may be followed by a spot interruption)."""

    def __init__(self, client: ImdsClient, on_notice: Callable[[Drain], None], interval: float = POLL_SECONDS) -> None:
        self.client = client
        self.on_notice = on_notice
        self.interval = interval
        self.seen: set[str] = set()

    async def run(self) -> None:
        silent = False
        checks = ((SPOT_PATH, spot_notice, "spot"), (REBALANCE_PATH, rebalance_notice, "rebalance"))
        while "spot" not in self.seen:
            for path, parse, kind in checks:
                if kind in self.seen:
                    continue
                answer = await self.client.get(path)
                if answer is None:
                    if not silent:
                        log.warning("IMDS at %s does not answer; spot and rebalance notices cannot be seen "
                                    "until it does", self.client.endpoint)
                    silent = True
                    break
                if silent:
                    log.info("IMDS at %s answers again", self.client.endpoint)
                    silent = False
                drain = parse(answer.text) if answer.status == 200 else None
                if drain is not None:
                    self.seen.add(kind)
                    log.warning("%s", drain.describe())
                    self.on_notice(drain)
            await asyncio.sleep(self.interval)
