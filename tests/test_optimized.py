"""The -OO re-execution's command line, as a real interpreter computes it (see test_deadline_ops for
the agent running under it)."""

from __future__ import annotations

import ast
import subprocess
import sys

PRINT_COMMAND = "from flamenco_deadline_worker.optimized import optimized_command; print(optimized_command())"


def command_of(*flags: str) -> object:
    out = subprocess.run([sys.executable, *flags, "-c", PRINT_COMMAND, "--backend", "deadline"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return ast.literal_eval(out.strip())


def test_the_command_line_keeps_the_original_flags_and_arguments_and_adds_oo() -> None:
    assert command_of("-X", "utf8") == [
        sys.executable, "-OO", "-X", "no_debug_ranges", "-X", "utf8", "-c", PRINT_COMMAND, "--backend", "deadline"
    ]


def test_no_second_re_execution_once_optimized() -> None:
    assert command_of("-OO") is None
