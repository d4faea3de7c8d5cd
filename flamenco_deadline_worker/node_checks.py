"""Pre-task checks: is this node fit to take a task?

A node whose shared storage is not mounted, or whose disk is full, would take task after task and
fail each one.  Before asking for a task the worker checks that configured paths can be read
(``pre_task_check_read``) and written (``pre_task_check_write``) and that the work directory has
``work_dir_min_free_mib`` free.  While a check fails it fetches nothing and looks again every
``RECHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from flamenco_deadline_worker.config import WorkerConfig

log = logging.getLogger(__name__)

RECHECK_SECONDS = 30.0
# A hung network mount must not hang the worker: a check taking longer than this fails.
CHECK_TIMEOUT_SECONDS = 10.0
MIB = 1024 * 1024


def check_readable(path: Path) -> str | None:
    """None when ``path`` (a file or a directory) can be read, else what is wrong."""
    try:
        if path.is_dir():
            with os.scandir(path) as entries:
                next(entries, None)
        else:
            with path.open("rb") as f:
                f.read(1)
    except OSError as exc:
        return f"pre_task_check_read: {path}: cannot read: {exc.strerror or exc}"
    return None


def check_writable(path: Path) -> str | None:
    """None when a file can be created in directory ``path`` (or file ``path`` opened to append)."""
    try:
        if path.is_dir():
            with tempfile.NamedTemporaryFile(dir=path, prefix=".flamenco-worker-check-"):
                pass
        else:
            with path.open("ab"):
                pass
    except OSError as exc:
        return f"pre_task_check_write: {path}: cannot write: {exc.strerror or exc}"
    return None


def check_free_space(work_dir: Path, min_bytes: int) -> str | None:
    """None when the file system of ``work_dir`` (or its nearest existing parent) has ``min_bytes`` free."""
    if min_bytes <= 0:
        return None
    existing = work_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError as exc:
        return f"work_dir_min_free_mib: {work_dir}: cannot tell the free space: {exc.strerror or exc}"
    if free < min_bytes:
        return (
            f"work_dir_min_free_mib: {work_dir} has {free / MIB:.0f} MiB free, "
            f"less than the {min_bytes / MIB:.0f} MiB required"
        )
    return None


@attrs.define
class NodeChecks:
    """The configured checks and the outcome of the last run."""

    readable: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    work_dir: Path | None = None
    min_free_bytes: int = 0
    recheck_seconds: float = RECHECK_SECONDS
    timeout: float = CHECK_TIMEOUT_SECONDS
    last: list[str] = attrs.field(factory=list)
    _running: asyncio.Future[list[str]] | None = None

    @classmethod
    def from_config(cls, config: WorkerConfig) -> NodeChecks:
        return cls(
            readable=tuple(config.home / Path(p).expanduser() for p in config.pre_task_check_read),
            writable=tuple(config.home / Path(p).expanduser() for p in config.pre_task_check_write),
            work_dir=config.work_dir,
            min_free_bytes=int(config.work_dir_min_free_mib * MIB),
        )

    @property
    def configured(self) -> bool:
        return bool(self.readable or self.writable or self.min_free_bytes > 0)

    def run_all(self) -> list[str]:
        """Every check, blocking (file system calls): the problems found, empty when all pass."""
        problems = [p for p in map(check_readable, self.readable) if p]
        problems += [p for p in map(check_writable, self.writable) if p]
        if self.work_dir is not None:
            problem = check_free_space(self.work_dir, self.min_free_bytes)
            if problem:
                problems.append(problem)
        return problems

    async def problems(self) -> list[str]:
        """Run the checks in a thread; logs when the outcome changes."""
        if not self.configured:
            return []
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(asyncio.to_thread(self.run_all))
        try:
            found = await asyncio.wait_for(asyncio.shield(self._running), self.timeout)
        except asyncio.TimeoutError:
            # The thread stays blocked (a hung mount); the next call waits for it instead of starting another.
            found = [f"pre-task checks did not finish within {self.timeout:g} s (a hung network mount?)"]
        if found != self.last:
            if found:
                log.warning(
                    "not fetching tasks: %s; checking again every %g s", "; ".join(found), self.recheck_seconds
                )
            else:
                log.info("pre-task checks pass again; fetching tasks")
        self.last = found
        return found
