"""Files and directories the worker makes for itself are its own: 0600 files, 0700 directories.

Only what the worker creates: a directory an installer or admin made keeps its mode (the installer
may open the logs directory to the worker's group on purpose), and so does an existing file.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_dirs(path: Path) -> None:
    """``mkdir -p`` where every directory created is 0700 (Path.mkdir applies its mode to the last one only)."""
    missing: list[Path] = []
    for current in [path, *path.parents]:
        if current.exists():
            break
        missing.append(current)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass


def opener(path: str, flags: int) -> int:
    """For ``open(..., opener=opener)``: a file created by this open is 0600 from its first byte."""
    return os.open(path, flags, FILE_MODE)


def touch(path: Path) -> None:
    """Create ``path`` (and its directories) private if it does not exist yet; leave it alone if it does.

    SQLite gives its -wal and -shm files the mode of the database file, so a queue created here first
    stays private whole."""
    make_dirs(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE))
