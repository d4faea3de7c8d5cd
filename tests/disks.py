"""Real small disks for the tests that need one (root only): a tmpfs of a given size, and a ballast that
fills it up to what a test leaves free."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tmpfs(size: str, *, read_only: bool = False, prefix: str = "fdw-disk-") -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax, e.g. "4m"), mounted for the block.  Not under tmp_path:
    another pytest session of the same user prunes old tmp_path trees, and would empty the mount
    (the ballast) under a running test."""
    mount = Path(tempfile.mkdtemp(prefix=prefix))
    options = f"ro,size={size}" if read_only else f"size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
        mount.rmdir()


def fill(disk: Path, leave: int) -> Path:
    """A ballast file taking all of ``disk`` but ``leave`` bytes; delete it to give the space back."""
    ballast = disk / "ballast"
    st = os.statvfs(disk)
    with ballast.open("wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return ballast
