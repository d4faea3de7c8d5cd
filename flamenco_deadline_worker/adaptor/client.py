"""The light side of the daemon: ``daemon run`` and ``daemon stop`` talk to a running daemon.

Only the standard library's os, sys, signal, _socket and json are imported here: a warm ``daemon run``
costs one Python start-up plus a socket round trip.  Output is pushed by the daemon as it happens and
the end of the action arrives as a message, so nothing polls.
"""

from __future__ import annotations

import _socket
import json
import os
import signal
import sys
from types import FrameType

from .protocol import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    LineReader,
    connection_file_path,
    encode,
    peer_uid,
)


class DaemonUnavailable(Exception):
    """No daemon answers for this connection file; ``stale`` when the file exists but nobody listens."""

    def __init__(self, message: str, stale: bool = False, missing: bool = False) -> None:
        super().__init__(message)
        self.stale = stale
        self.missing = missing  # no connection file at all: no daemon was started (or it was stopped)


def read_connection_file(path: str) -> dict[str, object]:
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise DaemonUnavailable(
            f"no adaptor daemon: connection file {path} does not exist (start one with 'daemon start')",
            missing=True,
        ) from None
    except (OSError, ValueError) as exc:
        raise DaemonUnavailable(f"connection file {path} is unreadable: {exc}", stale=True) from None
    if not isinstance(info, dict) or not isinstance(info.get("socket"), str):
        raise DaemonUnavailable(f"connection file {path} has no 'socket' entry", stale=True)
    return info


def connect(connection_file: str) -> _socket.socket:
    info = read_connection_file(connection_file)
    path = str(info["socket"])
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise DaemonUnavailable(
            f"the adaptor daemon of {connection_file} is not running (stale connection file: "
            f"cannot connect to {path}: {exc.strerror or exc}); start it again with 'daemon start'",
            stale=True,
        ) from None
    uid = peer_uid(sock)
    if uid != os.geteuid():
        sock.close()
        raise DaemonUnavailable(f"refusing the daemon at {path}: it runs as uid {uid}, we are uid {os.geteuid()}")
    return sock


def ping(connection_file: str) -> dict[str, object] | None:
    """The daemon's answer to a ping, or None when no daemon answers."""
    try:
        sock = connect(connection_file)
    except DaemonUnavailable:
        return None
    try:
        sock.sendall(encode({"op": "ping"}))
        return LineReader(sock).next()
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def _write(stream_lines: list[str]) -> None:
    if stream_lines:
        sys.stdout.write("\n".join(stream_lines) + "\n")
        sys.stdout.flush()


def perform(connection_file: str, op: str, data: str | None = None, source: str = "inline") -> int:
    """Send one action, print its output as it arrives; SIGINT/SIGTERM cancel it.  Returns the exit code."""
    try:
        sock = connect(connection_file)
    except DaemonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_UNAVAILABLE
    got_signal: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        got_signal.append(signum)
        try:
            sock.sendall(encode({"op": "cancel"}))
        except OSError:
            pass

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        request: dict[str, object] = {"op": op}
        if data is not None:
            request["data"] = data
            request["source"] = source
        sock.sendall(encode(request))
        reader = LineReader(sock)
        while True:
            msg = reader.next()
            if msg is None:
                print(f"error: the adaptor daemon closed the connection during {op}", file=sys.stderr, flush=True)
                return EXIT_FAILED
            batch = [msg, *reader.pending()]
            lines: list[str] = []
            for item in batch:
                if item.get("ev") == "out":
                    lines.append(str(item.get("line", "")))
                elif item.get("ev") == "end":
                    _write(lines)
                    return _finish(item, got_signal)
            _write(lines)
    except (OSError, ValueError) as exc:
        print(f"error: lost the adaptor daemon during {op}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _finish(end: dict[str, object], got_signal: list[int]) -> int:
    raw = end.get("code", EXIT_FAILED)
    code = raw if isinstance(raw, int) else EXIT_FAILED
    message = end.get("message")
    if end.get("canceled"):
        if message:
            print(f"canceled: {message}", file=sys.stderr, flush=True)
        return 128 + got_signal[0] if got_signal else (code or EXIT_FAILED)
    if code != EXIT_OK and message:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def remove_stale(connection_file: str) -> None:
    """Remove a dead daemon's connection file, and its socket directory when it is plainly ours."""
    try:
        info = read_connection_file(connection_file)
    except DaemonUnavailable:
        info = {}
    sock_path = str(info.get("socket", ""))
    directory = os.path.dirname(sock_path)
    try:
        if os.path.basename(directory).startswith("fdw-adaptor-") and os.stat(directory).st_uid == os.geteuid():
            for name in ("daemon.sock", "daemon.log"):
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass
            os.rmdir(directory)
    except OSError:
        pass
    try:
        os.unlink(connection_file)
    except OSError:
        pass


def stop(connection_file: str) -> int:
    """Stop the daemon.  No daemon to stop is not an error: a stop task must succeed on a host that never
    started one (or whose daemon already stopped itself); a stale connection file is removed with a note."""
    try:
        connect(connection_file).close()
    except DaemonUnavailable as exc:
        if exc.missing:
            print(f"note: no adaptor daemon runs for {connection_file} (no connection file); nothing to stop",
                  file=sys.stderr, flush=True)
            return EXIT_OK
        if exc.stale:
            remove_stale(connection_file)
            print(f"note: {exc}; removed the connection file", file=sys.stderr, flush=True)
            return EXIT_OK
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_UNAVAILABLE
    return perform(connection_file, "stop")


def fast_main(argv: list[str]) -> int | None:
    """``daemon run``/``daemon stop`` without argparse; None when the arguments need the full CLI."""
    if len(argv) < 2 or argv[0] != "daemon" or argv[1] not in ("run", "stop"):
        return None
    allowed = {"--connection-file"} | ({"--run-data"} if argv[1] == "run" else set())
    opts: dict[str, str] = {}
    rest = argv[2:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        name, eq, value = arg.partition("=")
        if name not in allowed or name in opts:
            return None
        if not eq:
            if i + 1 >= len(rest):
                return None
            i += 1
            value = rest[i]
        opts[name] = value
        i += 1
    if "--connection-file" not in opts:
        return None
    connection_file = connection_file_path(opts["--connection-file"])
    if argv[1] == "stop":
        return stop(connection_file)
    data = opts.get("--run-data")
    source = "inline"
    if data is not None and data.startswith("file://"):
        source = os.path.abspath(data[len("file://") :])
        try:
            with open(source, encoding="utf-8") as f:
                data = f.read()
        except OSError as exc:
            print(f"error: run-data: cannot read {source}: {exc.strerror or exc}", file=sys.stderr, flush=True)
            return EXIT_USAGE
    return perform(connection_file, "run", data, source)
