"""One worker per home: an exclusive lock on ``<home>/flamenco-worker.lock``, held for the worker's life.

Two workers on one home would sign on as one worker, run tasks twice and fight over one update
queue.  ``flock`` is released by the kernel when the holder dies, however it dies, so a stale
lock file never blocks a restart.  The file records the holder's pid for the messages of a second
worker, ``status``, ``flush`` and the installer.  The descriptor is close-on-exec, so task
processes never inherit the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

LOCK_FILE_NAME = "flamenco-worker.lock"


class HomeError(Exception):
    """The home cannot be taken: held by another worker, or not usable at all."""


class HomeLocked(HomeError):
    """Another live process holds the home."""

    def __init__(self, home: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"another worker ({holder}) is already running with home {home}; one worker per home. "
            "Stop it first, or give this one its own --home."
        )
        self.home = home
        self.pid = pid


def lock_path(home: Path) -> Path:
    return home / LOCK_FILE_NAME


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


class HomeLock:
    """The held lock; ``release()`` (or the process's end) frees it."""

    def __init__(self, home: Path, fd: int) -> None:
        self.home = home
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, home: Path) -> HomeLock:
        """Take the home's lock now, or raise HomeLocked naming the holder (never waits)."""
        try:
            home.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path(home), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise HomeError(f"home {home}: cannot create {lock_path(home)}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise HomeLocked(home, pid) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(home, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale pid for readers; the lock itself goes with close()
            os.close(fd)

    def __del__(self) -> None:
        self.release()


def holder(home: Path) -> int | None:
    """The pid holding ``home``'s lock (0: held, pid unknown), or None when nobody holds it.

    Only looks, through the kernel's lock table: taking even a shared lock for an instant could
    make a worker starting at that moment believe its home is taken.
    """
    try:
        st = lock_path(home).stat()
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        table = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return _probe(home)
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; blocked waiters are "1: -> FLOCK ...".
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
            return int(fields[4]) if fields[4].isdigit() else 0
    return None


def _probe(home: Path) -> int | None:
    """Without /proc/locks: a shared lock tried for an instant."""
    try:
        fd = os.open(lock_path(home), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _read_pid(fd) or 0
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
