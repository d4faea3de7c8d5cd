"""``deadline_disallow_instance_profile``: no work while the EC2 instance profile can be reached.

Any process on an EC2 instance, task processes included, can read the instance profile's
credentials from IMDS (``iam/security-credentials/<role>``); those are the host's, not the queue
role's.  As the AWS agent does with its ``disallow_instance_profile``, the agent, once STARTED and
before it takes work, asks IMDS ``iam/info``: 404 means no instance profile is attached, so there
is nothing a task could obtain; 200 means one is: the agent waits (``deadline_instance_profile_wait_seconds``)
for it to be disassociated, and if it stays, sets the worker STOPPED and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping

import attrs

from flamenco_deadline_worker.backends.deadline import imds

log = logging.getLogger(__name__)

EXIT_CONFIG = 2  # the admin must change the host or the configuration: systemd must not restart in a loop
EXIT_TRANSIENT = 1  # IMDS did not answer: systemd may try again
UNREACHABLE_TRIES = 5
UNREACHABLE_BACKOFF_SECONDS = 0.5  # doubled after each failure, at most 8 s: about 15 s in all
HOW_TO_FIX = (
    "Disassociate the instance profile from this instance (e.g. `aws ec2 disassociate-iam-instance-profile "
    "--association-id ...`, from a host-configuration step or the launch template), or set "
    "deadline_disallow_instance_profile = false if task processes may use the host's credentials."
)


@attrs.frozen
class Verdict:
    ok: bool
    message: str
    exit_code: int = 0


async def check(
    wait_seconds: float,
    environ: Mapping[str, str] = os.environ,
    poll_seconds: float = 1.0,
    client: imds.ImdsClient | None = None,
) -> Verdict:
    """Whether task processes may run: the verdict, with what was checked and what was done."""
    where = imds.locate(environ)
    if where.endpoint is None:
        vendor = imds.ec2_vendor()
        if not vendor:
            return Verdict(True, f"deadline_disallow_instance_profile: checked whether this host is an EC2 "
                                 f"instance: it is not ({where.why}); no instance profile to guard against")
        return Verdict(False, (
            f"deadline_disallow_instance_profile: this host is an EC2 instance ({vendor}) but IMDS may not be "
            f"asked ({where.why}), so the agent cannot check for an instance profile that task processes could "
            "use; it takes no work and exits. Unset AWS_EC2_METADATA_DISABLED for the agent, or make sure task "
            "users cannot reach 169.254.169.254 and set deadline_disallow_instance_profile = false."
        ), EXIT_CONFIG)
    owned = client is None
    client = client or imds.ImdsClient(where.endpoint)
    try:
        return await _wait_until_detached(client, where, wait_seconds, poll_seconds)
    finally:
        if owned:
            await client.close()


async def _wait_until_detached(
    client: imds.ImdsClient, where: imds.Where, wait_seconds: float, poll_seconds: float
) -> Verdict:
    give_up = time.monotonic() + wait_seconds
    announced = False
    unreachable = 0
    while True:
        answer = await client.get("iam/info")
        if answer is None:
            unreachable += 1
            if unreachable >= UNREACHABLE_TRIES:
                return Verdict(False, (
                    f"deadline_disallow_instance_profile: IMDS at {where.endpoint} ({where.why}) did not answer "
                    f"{unreachable} times, so whether an instance profile is attached is unknown; the agent takes "
                    "no work and exits (systemd starts it again). Check that IMDS is enabled for this instance."
                ), EXIT_TRANSIENT)
            await asyncio.sleep(min(8.0, UNREACHABLE_BACKOFF_SECONDS * 2**unreachable))
            continue
        unreachable = 0
        if answer.status == 404:
            return Verdict(True, (
                f"deadline_disallow_instance_profile: checked IMDS iam/info at {where.endpoint}: no instance profile "
                "is attached, so task processes cannot obtain instance profile credentials through IMDS"
                + ("; it was disassociated while the agent waited" if announced else "")
            ))
        arn = _profile_arn(answer.text) if answer.status == 200 else f"(IMDS answered {answer.status})"
        if not announced:
            log.warning("deadline_disallow_instance_profile: instance profile %s is attached (IMDS iam/info at %s); "
                        "taking no work while it is, waiting up to %.0f s for it to be disassociated",
                        arn, where.endpoint, wait_seconds)
            announced = True
        if time.monotonic() + poll_seconds > give_up:
            return Verdict(False, (
                f"deadline_disallow_instance_profile: instance profile {arn} is still attached after "
                f"{wait_seconds:.0f} s (IMDS iam/info at {where.endpoint}); task processes could obtain its "
                f"credentials, so the agent set the worker STOPPED and exits without taking work. {HOW_TO_FIX}"
            ), EXIT_CONFIG)
        await asyncio.sleep(poll_seconds)


def _profile_arn(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return "(unnamed)"
    return str(data.get("InstanceProfileArn", "(unnamed)")) if isinstance(data, dict) else "(unnamed)"
