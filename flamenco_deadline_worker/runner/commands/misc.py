"""The `misc` family: echo, sleep, exec."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from typing import Any

from flamenco_deadline_worker.runner.commands.base import (
    Command,
    CommandError,
    Context,
    Param,
    list_of_strings,
    non_empty,
    register,
)


def _non_negative(value: Any) -> str | None:
    return "must not be negative" if value < 0 else None


@register
class Echo(Command):
    name = "echo"
    parameters = (Param("message", (str,)),)

    async def run(self, ctx: Context, params: Mapping[str, Any]) -> None:
        ctx.reporter.log(params["message"])


@register
class Sleep(Command):
    name = "sleep"
    parameters = (Param("duration_in_seconds", (int, float), check=_non_negative),)

    async def run(self, ctx: Context, params: Mapping[str, Any]) -> None:
        seconds = params["duration_in_seconds"]
        ctx.reporter.log(f"sleeping {seconds:g} s")
        await asyncio.sleep(seconds)


def resolve_executable(exe: str, param: str = "exe") -> str:
    """Absolute path of ``exe`` (searched on PATH when it has no slash); CommandError when missing."""
    found = shutil.which(exe) if "/" not in exe else (exe if shutil.which(exe) else None)
    if not found:
        raise CommandError(f"parameter {param!r}: executable {exe!r} not found or not executable")
    return found


@register
class Exec(Command):
    name = "exec"
    parameters = (
        Param("exe", (str,), check=non_empty),
        Param("args", (list,), required=False, default=list, check=list_of_strings),
    )

    async def run(self, ctx: Context, params: Mapping[str, Any]) -> None:
        argv = [resolve_executable(params["exe"]), *params["args"]]
        code = await ctx.run_process(argv)
        if code != 0:
            raise CommandError(f"exec: {params['exe']} exited with code {code}")
