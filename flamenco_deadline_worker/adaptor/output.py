"""Where an adaptor's output goes: stdout for ``run``, the connected client for the daemon.

Every line the adaptor produces (status lines, log records, managed-process output, ``print``) passes
through ``emit()``; the runtime points the sink at the right place for the action in progress.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Callable

Sink = Callable[[str], None]

_lock = threading.Lock()


def _stdout_sink(line: str) -> None:
    stream = sys.__stdout__
    if stream is not None:
        stream.write(line + "\n")
        stream.flush()


_sink: Sink = _stdout_sink


def set_sink(sink: Sink | None) -> Sink:
    """Install ``sink`` (None: the process's real stdout); returns the previous one."""
    global _sink
    with _lock:
        previous = _sink
        _sink = sink or _stdout_sink
    return previous


def emit(line: str) -> None:
    with _lock:
        sink = _sink
    for part in line.split("\n"):
        try:
            sink(part)
        except Exception:  # noqa: BLE001 - output must never break the adaptor
            pass


class SinkStream(io.TextIOBase):
    """A text stream that hands complete lines to ``emit``; used for ``print`` inside the daemon."""

    def __init__(self) -> None:
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            data = self._partial + s
            *lines, self._partial = data.split("\n")
        for line in lines:
            emit(line)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            data, self._partial = self._partial, ""
        if data:
            emit(data)


class SinkHandler(logging.Handler):
    """Log records as ``LEVEL: message`` lines through the sink."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            emit(self.format(record))
        except Exception:  # noqa: BLE001
            self.handleError(record)


def install_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, SinkHandler) for h in root.handlers):
        root.addHandler(SinkHandler())
    root.setLevel(level)
