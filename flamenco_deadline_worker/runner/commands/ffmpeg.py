"""The `ffmpeg` family: frames-to-video."""

from __future__ import annotations

import glob
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flamenco_deadline_worker.runner.commands.base import (
    Command,
    CommandError,
    Context,
    Param,
    Reporter,
    absolute_path,
    list_of_strings,
    non_empty,
    register,
)
from flamenco_deadline_worker.runner.commands.blender import split_exe_args
from flamenco_deadline_worker.runner.commands.misc import resolve_executable


def _positive_number(value: Any) -> str | None:
    if not math.isfinite(value) or value <= 0:
        return "must be a number greater than 0"
    return None


def format_fps(fps: float) -> str:
    """24 -> '24', 23.976 -> '23.976': the shortest text FFmpeg reads back as the same rate."""
    if float(fps).is_integer():
        return str(int(fps))
    return repr(float(fps))


class FFmpegOutput:
    """FFmpeg's `frame=` progress (separated by carriage returns) becomes the activity."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.last_error: str | None = None

    def __call__(self, line: str) -> None:
        # Progress comes as "frame=  12 fps=..\rframe=  24 fps=..\r" until the next newline.
        last = line.rsplit("\r", 1)[-1].strip() or line.strip()
        if last.startswith("frame="):
            self.reporter.activity(" ".join(last.split())[:200])
        elif last:
            # FFmpeg's last words before a failing exit are its reason ("Unknown encoder 'x'").
            self.last_error = last[:300]


@register
class FramesToVideo(Command):
    """Runs ``exe exeArgs... argsBefore... -r fps -pattern_type glob -i inputGlob args... -r fps outputFile``."""

    name = "frames-to-video"
    task_type = "ffmpeg"
    parameters = (
        Param("exe", (str,), check=non_empty),
        Param("exeArgs", (str,), required=False, default=""),
        Param("fps", (int, float), check=_positive_number),
        Param("inputGlob", (str,), check=absolute_path),
        Param("outputFile", (str,), check=absolute_path),
        Param("argsBefore", (list,), required=False, default=list, check=list_of_strings),
        Param("args", (list,), required=False, default=list, check=list_of_strings),
    )

    async def run(self, ctx: Context, params: Mapping[str, Any]) -> None:
        argv = self.command_line(params)
        input_glob: str = params["inputGlob"]
        matches = len(glob.glob(input_glob))
        if matches == 0:
            raise CommandError(f"{self.name}: parameter 'inputGlob': no files match {input_glob!r}")
        output_file = Path(params["outputFile"])
        if not output_file.parent.is_dir():
            raise CommandError(
                f"{self.name}: parameter 'outputFile': directory {str(output_file.parent)!r} does not exist"
            )
        ctx.reporter.log(f"{self.name}: {matches} file(s) match {input_glob!r}")
        output = FFmpegOutput(ctx.reporter)
        code = await ctx.run_process(argv, on_line=output)
        if code != 0:
            reason = f": {output.last_error}" if output.last_error else ""
            raise CommandError(f"FFmpeg exited with code {code}{reason}")
        ctx.reporter.output_produced(str(output_file))

    @classmethod
    def command_line(cls, params: Mapping[str, Any]) -> list[str]:
        exe = resolve_executable(params["exe"])
        fps = format_fps(params["fps"])
        return [
            exe,
            *split_exe_args(params["exeArgs"], cls.name),
            *params["argsBefore"],
            # The input rate too: without it FFmpeg assumes 25 and drops or repeats frames.
            "-r", fps, "-pattern_type", "glob", "-i", params["inputGlob"],
            *params["args"],
            "-r", fps,
            params["outputFile"],
        ]
