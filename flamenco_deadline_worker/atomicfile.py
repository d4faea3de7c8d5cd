"""Writing a file so that readers see the old or the new content, never a torn one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(
    path: str | os.PathLike[str],
    text: str,
    mode: int = 0o600,
    *,
    prepare: Callable[[Path], object] | None = None,
) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, then rename it.

    The file has ``mode`` from its first byte (it may hold secrets) and is fsynced before the rename.
    ``prepare`` sees the temporary file before the rename (e.g. to chown it).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if prepare is not None:
            prepare(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
