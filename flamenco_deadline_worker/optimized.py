"""Re-executing the Deadline agent before it starts work: under ``python -OO`` (``deadline_python_optimize``),
and without the host's AWS keys in its environment.

The Deadline backend loads botocore, pydantic and openjd, whose docstrings alone hold about 1.5 MiB
for the life of the process; under ``-OO`` Python never loads them (nor runs ``assert`` statements,
which none of these libraries relies on for behaviour).  Python's optimisation level is fixed when
the interpreter starts, so the only way to get it is to replace the process: same pid (systemd and
the state file stay right), same arguments and interpreter flags, plus ``-OO``.

The host's AWS keys: ``/proc/<pid>/environ`` shows the environment a process was started with,
whatever it removes later, and any process of the same user (a session's task, when jobs run as
the agent's user) may read it.  So the agent re-executes itself with those variables taken out of
its environment and handed over through a pipe instead; the new image puts them back into its own
memory only (``take_handover``), where boto3 reads them once and the agent then drops them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)

# Names the pipe's file descriptor in the re-executed process (a number, not a secret).
HANDOVER_VARIABLE = "FLAMENCO_DEADLINE_WORKER_HANDOVER_FD"

# Set in the re-executed image: its keys came through the pipe, and are not in its /proc environ.
_handed_over = False


def optimized_command() -> list[str] | None:
    """The command line this process was started with, plus ``-OO``; None when it already runs
    optimized or the original command line is not known (an embedded interpreter)."""
    if sys.flags.optimize >= 2:
        return None
    original = _original_argv()
    if original is None:
        return None
    return [sys.executable, "-OO", "-X", "no_debug_ranges", *original[1:]]


def _original_argv() -> list[str] | None:
    original = list(getattr(sys, "orig_argv", []))
    if not sys.executable or len(original) < 2:
        return None
    return original


def reexec_optimized() -> None:
    """Replace this process with its ``-OO`` self; returns only if it cannot (then it runs as it is)."""
    reexec(optimize=True, withhold=())


def reexec(*, optimize: bool, withhold: Sequence[str]) -> None:
    """Replace this process with itself (under ``-OO`` when ``optimize``), the ``withhold`` variables
    moved from its environment into a pipe; returns when there is nothing to do or it cannot."""
    command = optimized_command() if optimize else None
    held = {} if _handed_over else {name: os.environ[name] for name in withhold if name in os.environ}
    if command is None and held:
        original = _original_argv()
        command = [sys.executable, *original[1:]] if original else None
    if command is None:
        return
    env = {name: value for name, value in os.environ.items() if name not in held}
    reader = -1
    if held:
        reader, writer = os.pipe()
        # A few hundred bytes: the pipe's buffer takes them without a reader.
        os.write(writer, json.dumps(held).encode())
        os.close(writer)
        os.set_inheritable(reader, True)
        env[HANDOVER_VARIABLE] = str(reader)
    log.debug("re-executing (%s%s): %s", "-OO" if "-OO" in command else "same flags",
              ", host credentials through a pipe" if held else "", command)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        if reader >= 0:
            os.close(reader)
        log.warning("could not re-execute (%s); running as started", exc)


def take_handover() -> None:
    """In the re-executed process: the variables handed over through the pipe, back into
    ``os.environ`` (this process's memory, not the environment /proc shows)."""
    global _handed_over
    fd_text = os.environ.pop(HANDOVER_VARIABLE, None)
    if not fd_text:
        return
    _handed_over = True
    try:
        fd = int(fd_text)
        with os.fdopen(fd, "rb") as pipe:
            values = json.loads(pipe.read())
    except (OSError, ValueError) as exc:
        log.warning("host credentials handed over by the re-executed agent could not be read: %s", exc)
        return
    if isinstance(values, dict):
        os.environ.update({str(k): str(v) for k, v in values.items()})
