"""The `file-management` family: make-directory, move-directory, copy-file.

These run inside the worker (no child process).  Blocking file work goes to a thread so the
event loop keeps delivering updates.  When the worker runs as root with a ``job_user``, what these
commands create is handed to that user, so the job's own processes can write into it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flamenco_deadline_worker.runner.commands.base import (
    Command,
    CommandError,
    Context,
    Param,
    absolute_path,
    register,
)

COPY_CHUNK = 4 * 1024 * 1024


def _give_to_job_user(ctx: Context, paths: list[Path]) -> None:
    if ctx.run_as is None or os.geteuid() != 0:
        return
    for path in paths:
        try:
            shutil.chown(path, user=ctx.run_as.user)
        except (OSError, LookupError) as exc:
            ctx.reporter.log(f"could not give {str(path)!r} to job user {ctx.run_as.user!r}: {exc}")


def _missing_parents(path: Path) -> list[Path]:
    """Directories above and including ``path`` that do not exist yet, outermost first."""
    missing = []
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing.append(p)
    return list(reversed(missing))


@register
class MakeDirectory(Command):
    """Creates ``path`` and any missing parents (like ``mkdir -p``); an existing directory is fine."""

    name = "make-directory"
    task_type = "file-management"
    parameters = (Param("path", (str,), check=absolute_path),)

    async def run(self, ctx: Context, params: Mapping[str, Any]) -> None:
        path = Path(params["path"])
        ctx.reporter.log(f"{self.name}: creating directory {str(path)!r}")
        created = _missing_parents(path)
        try:
            await asyncio.to_thread(path.mkdir, mode=0o775, parents=True, exist_ok=True)
        except FileExistsError:
            raise CommandError(f"{self.name}: parameter 'path': {str(path)!r} exists and is not a directory")
        except OSError as exc:
            raise CommandError(f"{self.name}: cannot create directory {str(path)!r}: {exc.strerror or exc}")
        _give_to_job_user(ctx, created)


def timestamped_name(path: Path) -> Path:
    """``path`` with its modification time appended (``-YYYY-MM-DD_HHMMSS``), then ``-001``, ``-002``...
    until the name is free."""
    stamp = time.strftime("%Y-%m-%d_%H%M%S", time.localtime(path.lstat().st_mtime))
    candidate = path.with_name(f"{path.name}-{stamp}")
    if not os.path.lexists(candidate):
        return candidate
    taken = [
        int(m.group(1))
        for other in path.parent.glob(f"{glob_escape(candidate.name)}-*")
        if (m := re.fullmatch(re.escape(candidate.name) + r"-(\d+)", other.name))
    ]
    number = max(taken, default=0) + 1
    while os.path.lexists(candidate.with_name(f"{candidate.name}-{number:03d}")):
        number += 1
    return candidate.with_name(f"{candidate.name}-{number:03d}")


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _move(src: Path, dest: Path) -> None:
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(str(src), str(dest))  # another file system: copy, then remove


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
        src, dest = Path(params["src"]), Path(params["dest"])
        if not os.path.lexists(src):
            raise CommandError(f"{self.name}: parameter 'src': {str(src)!r} does not exist, nothing moved")
        if not src.is_dir():
            raise CommandError(f"{self.name}: parameter 'src': {str(src)!r} is not a directory")
        if src.resolve() == dest.resolve() or src.resolve() in dest.resolve().parents:
            raise CommandError(f"{self.name}: parameter 'dest': {str(dest)!r} is {str(src)!r} or inside it")
        if not dest.parent.is_dir():
            raise CommandError(
                f"{self.name}: parameter 'dest': parent directory {str(dest.parent)!r} does not exist"
            )
        if os.path.lexists(dest):
            aside = timestamped_name(dest)
            ctx.reporter.log(f"{self.name}: {str(dest)!r} exists, moving it to {str(aside)!r}")
            try:
                await asyncio.to_thread(_move, dest, aside)
            except OSError as exc:
                raise CommandError(f"{self.name}: cannot move {str(dest)!r} aside: {exc.strerror or exc}")
        ctx.reporter.log(f"{self.name}: moving {str(src)!r} to {str(dest)!r}")
        try:
            await asyncio.to_thread(_move, src, dest)
        except OSError as exc:
            raise CommandError(f"{self.name}: cannot move {str(src)!r} to {str(dest)!r}: {exc.strerror or exc}")


def _copy(src: Path, dest: Path) -> int:
    """Copies a regular file to a new file ``dest`` (never overwriting); returns the bytes copied."""
    copied = 0
    with src.open("rb") as fin, dest.open("xb") as fout:
        try:
            while chunk := fin.read(COPY_CHUNK):
                fout.write(chunk)
                copied += len(chunk)
        except BaseException:
            fout.close()
            dest.unlink(missing_ok=True)
            raise
    shutil.copymode(src, dest)
    return copied


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
        src, dest = Path(params["src"]), Path(params["dest"])
        if not src.exists():
            raise CommandError(f"{self.name}: parameter 'src': {str(src)!r} does not exist, nothing copied")
        if not src.is_file():
            raise CommandError(f"{self.name}: parameter 'src': {str(src)!r} is not a regular file")
        if os.path.lexists(dest):
            raise CommandError(f"{self.name}: parameter 'dest': {str(dest)!r} already exists, nothing copied")
        created = _missing_parents(dest.parent)
        ctx.reporter.log(f"{self.name}: copying {str(src)!r} to {str(dest)!r}")
        try:
            await asyncio.to_thread(dest.parent.mkdir, mode=0o775, parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(
                f"{self.name}: parameter 'dest': cannot create directory {str(dest.parent)!r}: "
                f"{'a file is in the way' if isinstance(exc, FileExistsError) else exc.strerror or exc}"
            )
        try:
            size = await asyncio.to_thread(_copy, src, dest)
        except FileExistsError:
            raise CommandError(f"{self.name}: parameter 'dest': {str(dest)!r} already exists, nothing copied")
        except OSError as exc:
            raise CommandError(f"{self.name}: cannot copy {str(src)!r} to {str(dest)!r}: {exc.strerror or exc}")
        _give_to_job_user(ctx, [*created, dest])
        ctx.reporter.log(f"{self.name}: copied {size} bytes")
