"""The `blender` family: blender-render, with Blender's output turned into activity, steps and previews."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flamenco_deadline_worker.runner.commands.base import (
    Command,
    CommandError,
    Context,
    Param,
    Reporter,
    list_of_strings,
    non_empty,
    register,
)
from flamenco_deadline_worker.runner.commands.misc import resolve_executable

# Longest activity text taken from one Blender line; the rest stays in the log.
ACTIVITY_MAX_CHARS = 200

_SAVED = re.compile(r"^Saved: '(?P<path>.*)'")
_FRAME_TIME = re.compile(r"^Time: (?P<time>[0-9:.]+)")
_FRAME_SKIPPED = re.compile(r"^skipping existing frame")
_FRA = re.compile(r"^Fra:(?P<frame>-?\d+)\b")
_TRACEBACK = "Traceback (most recent call last)"


def split_exe_args(value: str, command: str) -> list[str]:
    """``exeArgs`` split like a POSIX shell would, without running one."""
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise CommandError(f"{command}: parameter 'exeArgs' cannot be split into arguments: {exc} (value {value!r})")


class BlenderOutput:
    """Reads Blender's output line by line: activity, produced files, finished frames, errors."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.frame: str | None = None
        self.frames_done = 0
        self.outputs: list[str] = []
        self.last_error: str | None = None
        self.python_error: str | None = None
        self._in_traceback = False

    def __call__(self, line: str) -> None:
        text = line.strip()
        if not text:
            return
        if self._in_traceback:
            # The exception line is the first one of a traceback that is not indented.
            if not line.startswith((" ", "\t")) and _TRACEBACK not in line:
                self.python_error = text
                self._in_traceback = False
            return
        if _TRACEBACK in text:
            self._in_traceback = True
            return
        if text.startswith("Error:"):
            self.last_error = text
            return
        match = _FRA.match(text)
        if match:
            self.frame = match["frame"]
            self.reporter.activity(text[:ACTIVITY_MAX_CHARS])
            return
        match = _SAVED.match(text)
        if match:
            path = match["path"]
            self.outputs.append(path)
            self.reporter.activity(f"{self._frame_prefix()}saved {path}"[:ACTIVITY_MAX_CHARS])
            self.reporter.output_produced(path)
            return
        match = _FRAME_TIME.match(text)
        if match:
            self.frames_done += 1
            self.reporter.activity(f"{self._frame_prefix()}frame finished in {match['time']}")
            self.reporter.step_done()
            return
        if _FRAME_SKIPPED.match(text):
            self.frames_done += 1
            self.reporter.activity(text[:ACTIVITY_MAX_CHARS])
            self.reporter.step_done()

    def _frame_prefix(self) -> str:
        return f"Fra:{self.frame} " if self.frame is not None else ""

    def failure_reason(self) -> str | None:
        return self.python_error or self.last_error


@register
class BlenderRender(Command):
    """Runs ``exe exeArgs... argsBefore... blendfile args...`` (no shell)."""

    name = "blender-render"
    task_type = "blender"
    parameters = (
        Param("exe", (str,), check=non_empty),
        Param("exeArgs", (str,), required=False, default=""),
        Param("argsBefore", (list,), required=False, default=list, check=list_of_strings),
        # Empty is allowed: a Python script in the arguments may build or load the scene itself.
        Param("blendfile", (str,), required=False, default=""),
        Param("args", (list,), required=False, default=list, check=list_of_strings),
    )

    async def run(self, ctx: Context, params: Mapping[str, Any]) -> None:
        argv = self.command_line(params)
        blendfile: str = params["blendfile"]
        if blendfile and Path(blendfile).is_absolute() and not Path(blendfile).exists():
            raise CommandError(f"{self.name}: parameter 'blendfile': file {blendfile!r} does not exist")
        output = BlenderOutput(ctx.reporter)
        code = await ctx.run_process(argv, on_line=output)
        if code != 0:
            reason = output.failure_reason()
            raise CommandError(
                f"Blender exited with code {code}" + (f": {reason}" if reason else "")
                + f" (after {output.frames_done} finished frame(s))"
            )
        if output.python_error:
            # Without --python-exit-code Blender ignores a failing script; say so in the log at least.
            ctx.reporter.log(f"{self.name}: note: Blender reported a Python error but exited with 0: "
                             f"{output.python_error}")

    @classmethod
    def command_line(cls, params: Mapping[str, Any]) -> list[str]:
        exe = resolve_executable(params["exe"])
        argv = [exe, *split_exe_args(params["exeArgs"], cls.name), *params["argsBefore"]]
        if params["blendfile"]:
            argv.append(params["blendfile"])
        argv.extend(params["args"])
        return argv
