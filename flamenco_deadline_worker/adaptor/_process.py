"""Synchronous child processes for adaptors: own session and process group, output read by a thread
line by line (the worker's LineSplitter), group terminate with SIGTERM, grace, SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from ..runner.process import READ_CHUNK, LineSplitter


class RunningProcess:
    """One started child; its stdout and stderr (merged) go to ``on_line`` from a reader thread."""

    def __init__(
        self,
        argv: Sequence[str],
        on_line: Callable[[str], None],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        if not argv:
            raise ValueError("empty command line")
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
        self.pid = self.popen.pid
        self._splitter = LineSplitter(on_line)
        self._reader = threading.Thread(target=self._read, name=f"output-{self.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.popen.stdout
        assert stdout is not None
        fd = stdout.fileno()
        try:
            while True:
                data = os.read(fd, READ_CHUNK)
                if not data:
                    break
                self._splitter.feed(data)
        except OSError:
            pass
        finally:
            self._splitter.close()
            stdout.close()

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def signal_group(self, sig: int) -> bool:
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child, then sweep what it left in its group so the output pipe closes."""
        code = self.popen.wait(timeout)
        self.signal_group(signal.SIGKILL)
        self._reader.join()
        return code

    def output_done(self, timeout: float | None = None) -> bool:
        self._reader.join(timeout)
        return not self._reader.is_alive()

    def terminate_tree(self, grace: float) -> None:
        """SIGTERM to the group, SIGKILL to it after ``grace`` seconds (or at once if the leader is gone)."""
        if self.popen.poll() is None and self.signal_group(signal.SIGTERM):
            deadline = time.monotonic() + grace
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(max(0.0, deadline - time.monotonic()))
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
