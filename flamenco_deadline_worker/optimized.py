"""Re-executing the worker under ``python -OO`` before it starts work (``deadline_python_optimize``).

The Deadline backend loads botocore, pydantic and openjd, whose docstrings alone hold about 1.5 MiB
for the life of the process; under ``-OO`` Python never loads them (nor runs ``assert`` statements,
which none of these libraries relies on for behaviour).  Python's optimisation level is fixed when
the interpreter starts, so the only way to get it is to replace the process: same pid (systemd and
the state file stay right), same arguments and interpreter flags, plus ``-OO``.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def optimized_command() -> list[str] | None:
    """The command line this process was started with, plus ``-OO``; None when it already runs
    optimized or the original command line is not known (an embedded interpreter)."""
    if sys.flags.optimize >= 2:
        return None
    original = list(getattr(sys, "orig_argv", []))
    if not sys.executable or len(original) < 2:
        return None
    return [sys.executable, "-OO", "-X", "no_debug_ranges", *original[1:]]


def reexec_optimized() -> None:
    """Replace this process with its ``-OO`` self; returns only if it cannot (then it runs as it is)."""
    command = optimized_command()
    if command is None:
        return
    log.debug("re-executing under python -OO (deadline_python_optimize): %s", command)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execv(command[0], command)
    except OSError as exc:
        log.warning("could not re-execute under python -OO (%s); running as started", exc)
