"""``deadline_shutdown_on_stop``: shut the host down once the service has stopped the worker.

The service asks a worker to stop when its fleet scales in; on a customer-managed fleet the
autoscaler expects the host to go away then (the AWS agent's ``shutdown_on_stop``).  The command
(``deadline_shutdown_command``, default ``sudo -n /usr/sbin/shutdown now``) runs without a shell,
with its output logged; ``sudo -n`` fails at once instead of asking for a password.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
from collections.abc import Sequence

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 60.0


async def shut_down_host(command: Sequence[str], timeout: float = TIMEOUT_SECONDS) -> bool:
    """Run ``command``; True when it exited 0."""
    shown = shlex.join(command)
    log.warning("the service stopped this worker and deadline_shutdown_on_stop is set: shutting the host down "
                "with: %s", shown)
    for handler in logging.getLogger().handlers:  # the log lines above reach the disk before the host goes
        handler.flush()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env,
        )
    except OSError as exc:
        log.error("cannot run the host shutdown command %s: %s; set deadline_shutdown_command to a command "
                  "that works for this user (e.g. a sudoers rule for /usr/sbin/shutdown now)", shown, exc)
        return False
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        log.error("the host shutdown command %s did not end within %.0f s", shown, timeout)
        proc.kill()
        await proc.wait()
        return False
    text = output.decode(errors="replace").strip()
    if proc.returncode != 0:
        log.error("the host shutdown command %s exited %d: %s; the host stays up. Allow it, e.g. with the "
                  "sudoers rule '<agent user> ALL=(root) NOPASSWD: /usr/sbin/shutdown now', or set "
                  "deadline_shutdown_command", shown, proc.returncode, text or "(no output)")
        return False
    log.info("the host shutdown command %s exited 0%s", shown, f": {text}" if text else "")
    return True
