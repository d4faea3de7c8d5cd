"""The `file-management` family: make-directory, move-directory, copy-file.

The work itself (and the path rules) is in ``fileops``.  Without ``job_user`` it runs in a thread of
the worker, so the event loop keeps delivering updates.  With ``job_user`` it runs in a child
process switched to that user (by subprocess itself, in C; through ``sudo -n`` when the worker is not
root), contained and killed on abort like any task process: a job reaches exactly what its user may.
Either way a path outside ``file_command_roots`` (and the work directory), or on the worker's own
files, fails the task with the path and the rule.
"""

from __future__ import annotations

import asyncio
import functools
import grp
import inspect
import json
import os
import pwd
import shutil
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flamenco_deadline_worker.runner import process
from flamenco_deadline_worker.runner.commands import fileops
from flamenco_deadline_worker.runner.commands.base import (
    Command,
    CommandError,
    Context,
    Param,
    absolute_path,
    register,
)


@functools.cache
def _child_program() -> str:
    """fileops' own source: the whole program of the job user's child (standard library only)."""
    return inspect.getsource(fileops)


@functools.cache
def _interpreter_for(user: str) -> str:
    """A Python the job user may run: ours, else the system's (the child needs only the standard
    library, so any Python 3.8 or later does; a venv or pyenv under /root is often closed to others)."""
    candidates = [os.path.realpath(sys.executable)]
    system = shutil.which("python3", path=os.defpath + ":/usr/local/bin")
    if system:
        candidates.append(os.path.realpath(system))
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return candidates[0]
    groups = {entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    for candidate in candidates:
        if _usable_by(candidate, entry.pw_uid, groups):
            return candidate
    return candidates[0]


def _usable_by(path: str, uid: int, groups: set[int]) -> bool:
    """Whether ``uid`` (with ``groups``) may reach and execute ``path``, by the permission bits."""
    target = Path(path)
    for part in [*reversed(target.parents), target]:
        try:
            st = part.stat()
        except OSError:
            return False
        if st.st_uid == uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


async def run_file_command(ctx: Context, name: str, params: Mapping[str, Any]) -> None:
    rules = {"roots": list(ctx.file_rules.roots), "protected": list(ctx.file_rules.protected)}
    if ctx.run_as is None:
        loop = asyncio.get_running_loop()

        def log(text: str) -> None:
            loop.call_soon_threadsafe(ctx.reporter.log, text)

        try:
            await asyncio.to_thread(fileops.run, name, dict(params), rules, log)
        except fileops.FileCommandError as exc:
            raise CommandError(str(exc)) from None
        return
    await _run_as_job_user(ctx, name, params, rules)


async def _run_as_job_user(ctx: Context, name: str, params: Mapping[str, Any], rules: dict[str, Any]) -> None:
    request = json.dumps({"command": name, "params": dict(params), "rules": rules})
    errors: list[str] = []

    def on_line(line: str) -> None:
        try:
            item = json.loads(line)
        except ValueError:
            item = {"log": line}  # the interpreter's own complaint, say
        if not isinstance(item, dict):
            item = {"log": line}
        if "error" in item:
            errors.append(str(item["error"]))
        else:
            ctx.reporter.log(str(item.get("log", "")))

    assert ctx.run_as is not None
    argv = [_interpreter_for(ctx.run_as.user), "-I", "-S", "-c", _child_program(), request]
    try:
        code = await process.run_process(
            argv, on_line, cwd=ctx.workdir, limits=ctx.limits, run_as=ctx.run_as
        )
    except process.ProcessTimeout as exc:
        raise CommandError(f"{name}: {exc}") from None
    except OSError as exc:
        raise CommandError(f"{name}: cannot start the file operation as job user {ctx.run_as.user!r}: "
                           f"{exc.strerror or exc}") from None
    if errors:
        raise CommandError(errors[-1])
    if code != 0:
        raise CommandError(f"{name}: the file operation as job user {ctx.run_as.user!r} ended with exit code {code}")


@register
class MakeDirectory(Command):
    """Creates ``path`` and any missing parents (like ``mkdir -p``); an existing directory is fine."""

    name = "make-directory"
    task_type = "file-management"
    parameters = (Param("path", (str,), check=absolute_path),)

    async def run(self, ctx: Context, params: Mapping[str, Any]) -> None:
        await run_file_command(ctx, self.name, params)


@register
class MoveDirectory(Command):
    """Moves ``src`` to ``dest``; an existing ``dest`` is first moved aside to a timestamped name."""

    name = "move-directory"
    task_type = "file-management"
    parameters = (
        Param("src", (str,), check=absolute_path),
        Param("dest", (str,), check=absolute_path),
    )

    async def run(self, ctx: Context, params: Mapping[str, Any]) -> None:
        await run_file_command(ctx, self.name, params)


@register
class CopyFile(Command):
    """Copies file ``src`` to ``dest``, which must not exist; missing parent directories are created."""

    name = "copy-file"
    task_type = "file-management"
    parameters = (
        Param("src", (str,), check=absolute_path),
        Param("dest", (str,), check=absolute_path),
    )

    async def run(self, ctx: Context, params: Mapping[str, Any]) -> None:
        await run_file_command(ctx, self.name, params)
