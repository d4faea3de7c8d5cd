"""The daemon protocol: one JSON object per line over a UNIX stream socket.

Client to daemon, first line:  {"op": "start"|"run"|"stop"|"ping", "data": text, "source": str}
Client to daemon, later lines: {"op": "cancel"}
Daemon to client:              {"ev": "out", "line": str} as output happens, then exactly one
                               {"ev": "end", "code": int, "canceled": bool, "message": str}

This module imports only the standard library's json and _socket (the C core of socket, without
socket.py's enum and selectors imports): ``daemon run`` uses it.
"""

from __future__ import annotations

import _socket
import json
import os
import sys

PROTOCOL_VERSION = 1

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

# The worker sets this for task processes to a directory in its own home (see connection_file_path).
CONNECTION_DIR_ENV = "FDW_ADAPTOR_CONNECTION_DIR"


def connection_file_path(value: str) -> str:
    """Where connection file ``value`` lives: an absolute path as given; a relative one in
    ``$FDW_ADAPTOR_CONNECTION_DIR`` when set (so two workers on one host never share a daemon), else
    in the current directory."""
    if os.path.isabs(value):
        return os.path.normpath(value)
    base = os.environ.get(CONNECTION_DIR_ENV) or os.getcwd()
    return os.path.normpath(os.path.join(base, value))


def encode(message: dict[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def peer_uid(sock: _socket.socket) -> int:
    """The uid of the process at the other end (SO_PEERCRED: pid, uid, gid as three C ints)."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], sys.byteorder, signed=False)


class LineReader:
    """Reads JSON lines from a socket; ``next()`` returns None at end of stream."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._lines: list[bytes] = []

    def next(self) -> dict[str, object] | None:
        while not self._lines:
            data = self._sock.recv(65536)
            if not data:
                return None
            *lines, self._buf = (self._buf + data).split(b"\n")
            self._lines.extend(line for line in lines if line)
        raw = self._lines.pop(0)
        msg = json.loads(raw)
        if not isinstance(msg, dict):
            raise ValueError(f"protocol error: expected an object, got {raw[:80]!r}")
        return msg

    def pending(self) -> list[dict[str, object]]:
        """Messages already received but not yet returned (lets a client batch its output writes)."""
        out = []
        while self._lines:
            msg = json.loads(self._lines.pop(0))
            if isinstance(msg, dict):
                out.append(msg)
        return out
