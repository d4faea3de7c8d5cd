"""The adaptor daemon: a background process keeping one adaptor (and its application) warm.

It serves a UNIX socket in a fresh 0700 directory, refuses peers of another uid (SO_PEERCRED), writes
the connection file 0600, runs one action at a time and pushes every output line to the client as it
happens.  A client that disconnects mid-action cancels that action; with no client for ``idle_timeout``
seconds the daemon stops the adaptor and exits on its own.

``daemon start`` (``start_daemon``) spawns ``python -m flamenco_deadline_worker.adaptor.daemon`` in its
own session and returns as soon as the daemon says it is listening and ``on_start`` has finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import FrameType

from ..atomicfile import write_atomic
from . import client, output
from .protocol import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PROTOCOL_VERSION,
    LineReader,
    connection_file_path,
    encode,
    peer_uid,
)
from .runtime import Result, Session, UsageError, build_adaptor, load_adaptor_class, read_data_arg

DEFAULT_IDLE_TIMEOUT = 900.0


def write_private_file(path: str, text: str) -> None:
    """Write ``path`` atomically, mode 0600 from the first byte."""
    write_atomic(path, text, 0o600)


class _Sender:
    """Sends messages on one client connection; a vanished client only silences the output."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.broken = False

    def send(self, message: dict[str, object]) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                self._conn.sendall(encode(message))
            except OSError:
                self.broken = True

    def out(self, line: str) -> None:
        self.send({"ev": "out", "line": line})


class DaemonServer:
    def __init__(self, session: Session, connection_file: str, idle_timeout: float) -> None:
        self.session = session
        self.connection_file = connection_file
        self.idle_timeout = idle_timeout
        self.directory = tempfile.mkdtemp(prefix="fdw-adaptor-", dir=_runtime_dir())
        os.chmod(self.directory, 0o700)
        self.socket_path = os.path.join(self.directory, "daemon.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        self.listener.listen(16)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._busy = threading.Lock()
        self._state_lock = threading.Lock()
        self._connections = 0
        self._last_activity = time.monotonic()
        self._stop_reason: str | None = None
        self._stopped = threading.Event()
        info = {
            "socket": self.socket_path,
            "pid": os.getpid(),
            "protocol": PROTOCOL_VERSION,
            "adaptor": session.adaptor.adaptor_name(),
        }
        write_private_file(connection_file, json.dumps(info) + "\n")

    # -- main loop ---------------------------------------------------------------------------------
    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self.wake()

    def serve(self) -> int:
        while self._stop_reason is None:
            timeout = None
            with self._state_lock:
                idle = self._connections == 0 and not self._busy.locked()
                last = self._last_activity
            if idle and self.idle_timeout > 0:
                timeout = last + self.idle_timeout - time.monotonic()
                if timeout <= 0:
                    self._stop_reason = f"no client for {self.idle_timeout:g} s"
                    break
            listen_fd = self.listener.fileno()
            readable, _, _ = select.select([listen_fd, self._wake_r], [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            if listen_fd in readable:
                conn, _ = self.listener.accept()
                with self._state_lock:
                    self._connections += 1
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
        return self._shutdown()

    def _shutdown(self) -> int:
        output.emit(f"INFO: adaptor daemon stopping: {self._stop_reason}")
        with contextlib.suppress(OSError):
            self.listener.close()
        code = EXIT_OK
        if not self._stopped.is_set():
            # Stopped by a signal or by idleness: end what runs, then stop the adaptor ourselves.
            self.session.cancel("the daemon is stopping")
            with self._busy:
                result = self.session.perform("stop")
            code = result.code
        self._remove_files()
        return code

    def _remove_files(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            with open(self.connection_file, encoding="utf-8") as f:
                if json.load(f).get("socket") == self.socket_path:
                    os.unlink(self.connection_file)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- one connection ----------------------------------------------------------------------------
    def _handle(self, conn: socket.socket) -> None:
        sender = _Sender(conn)
        try:
            uid = peer_uid(conn)
            if uid != os.geteuid():
                output.emit(f"WARNING: refused a connection from uid {uid}: only uid {os.geteuid()} may connect")
                sender.send(
                    {"ev": "end", "code": EXIT_UNAVAILABLE, "message": f"refused: uid {uid} may not use this daemon"}
                )
                return
            reader = LineReader(conn)
            request = reader.next()
            if request is None:
                return
            op = request.get("op")
            if op == "ping":
                sender.send({"ev": "end", "code": EXIT_OK, "pid": os.getpid(), "active": self.session.active})
            elif op == "cancel":
                canceled = self.session.cancel("canceled by a client")
                sender.send({"ev": "end", "code": EXIT_OK, "message": "canceled" if canceled else "nothing to cancel"})
            elif op in ("start", "run", "stop"):
                self._action(str(op), request, reader, sender)
            else:
                sender.send({"ev": "end", "code": EXIT_USAGE, "message": f"unknown request {op!r}"})
        except (OSError, ValueError) as exc:
            output.emit(f"WARNING: client connection failed: {exc}")
        finally:
            _close_gently(conn)
            with self._state_lock:
                self._connections -= 1
                self._last_activity = time.monotonic()
            self.wake()

    def _action(self, op: str, request: dict[str, object], reader: LineReader, sender: _Sender) -> None:
        if not self._busy.acquire(blocking=False):
            active = self.session.active or "an action"
            message = f"busy: the daemon is running {active}; one action at a time"
            sender.send({"ev": "end", "code": EXIT_UNAVAILABLE, "message": message})
            return
        if self._stopped.is_set() or self._stop_reason is not None:
            self._busy.release()
            sender.send({"ev": "end", "code": EXIT_UNAVAILABLE, "message": "the daemon is stopping"})
            return
        done = threading.Event()
        data = request.get("data")
        source = str(request.get("source", "inline"))

        def work() -> None:
            result = Result(EXIT_FAILED, "internal error")
            output.set_sink(sender.out)
            try:
                result = self.session.perform(op, data if isinstance(data, str) else None, source)
            finally:
                output.set_sink(None)
                if op == "stop":
                    self._stopped.set()
                # Free the daemon before the client hears "end": a client that starts its next
                # action at once (auto-start does start then run) must not find it still busy.
                done.set()
                self._busy.release()
                sender.send({"ev": "end", "code": result.code, "canceled": result.canceled, "message": result.message})
                if op == "stop":
                    self.request_stop("stop requested by a client")

        worker = threading.Thread(target=work, name=f"action-{op}", daemon=True)
        worker.start()
        while True:
            try:
                msg = reader.next()
            except (OSError, ValueError):
                msg = None
            if msg is None:
                if not done.is_set():
                    self.session.cancel("the client went away")
                break
            if msg.get("op") == "cancel":
                self.session.cancel("canceled by the client")
        worker.join()


def _close_gently(conn: socket.socket) -> None:
    """Close after the peer has read our last message: closing a UNIX socket with unread input resets it."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(2.0)
        drained = 0
        while drained < 1 << 20:
            chunk = conn.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    with contextlib.suppress(OSError):
        conn.close()


def _runtime_dir() -> str | None:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK) and len(base) < 60:
        return base
    return None


# -- the daemon process --------------------------------------------------------------------------------
def daemon_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flamenco_deadline_worker.adaptor.daemon")
    parser.add_argument("--adaptor", required=True)
    parser.add_argument("--connection-file", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT)
    args = parser.parse_args(argv)
    payload = json.loads(sys.stdin.read() or "{}")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    for path in reversed(payload.get("sys_path", [])):
        if path not in sys.path:
            sys.path.insert(0, path)

    def ready(message: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(args.ready_fd, message)
            os.close(args.ready_fd)

    output.install_logging()
    try:
        cls = load_adaptor_class(args.adaptor)
        adaptor = build_adaptor(
            cls,
            payload.get("init_data", "{}"),
            payload.get("init_source", "inline"),
            payload.get("rules"),
            payload.get("rules_source", "inline"),
        )
        server = DaemonServer(Session(adaptor), args.connection_file, args.idle_timeout)
    except UsageError as exc:
        ready(b"E" + str(exc).encode())
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the starter shows the reason
        ready(b"E" + f"the adaptor daemon could not start: {type(exc).__name__}: {exc}".encode())
        raise

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.request_stop(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # From here on, output outside an action goes to a log next to the socket.
    log_fd = os.open(os.path.join(server.directory, "daemon.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = output.SinkStream()
    sys.stderr = output.SinkStream()
    ready(b"OK")
    return server.serve()


# -- daemon start -----------------------------------------------------------------------------------
def start_daemon(
    adaptor_spec: str,
    connection_file: str,
    init_arg: str | None,
    rules_arg: str | None,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    *,
    startup_timeout: float = 120.0,
) -> int:
    """Spawn the daemon, wait until it listens, run ``on_start`` through it; returns the exit code."""
    connection_file = connection_file_path(connection_file)
    if os.path.exists(connection_file):
        pong = client.ping(connection_file)
        if pong is not None:
            print(
                f"error: an adaptor daemon (pid {pong.get('pid')}) already serves {connection_file}; "
                "stop it first with 'daemon stop'",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
        print(f"note: replacing the stale connection file {connection_file}", file=sys.stderr)
        client.remove_stale(connection_file)
    try:
        init_text, init_source = read_data_arg("init-data", init_arg)
        rules_text, rules_source = read_data_arg("path-mapping-rules", rules_arg) if rules_arg else (None, "inline")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    payload = {
        "init_data": init_text,
        "init_source": init_source,
        "rules": rules_text,
        "rules_source": rules_source,
        "sys_path": [p for p in sys.path if p],
    }
    ready_r, ready_w = os.pipe()
    errlog = tempfile.TemporaryFile()
    argv = [
        sys.executable,
        "-m",
        "flamenco_deadline_worker.adaptor.daemon",
        "--adaptor",
        adaptor_spec,
        "--connection-file",
        connection_file,
        "--ready-fd",
        str(ready_w),
        "--idle-timeout",
        repr(float(idle_timeout)),
    ]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=errlog,
        stderr=errlog,
        pass_fds=(ready_w,),
        start_new_session=True,
        # Under a flamenco-worker: this daemon serves the job's next tasks, so it outlives this command.
        env={**os.environ, "FLAMENCO_TASK_KEEP": "1"},
    )
    os.close(ready_w)
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(payload).encode())
        proc.stdin.close()
    except OSError:
        pass
    answer = _read_ready(ready_r, startup_timeout)
    os.close(ready_r)
    if answer != b"OK":
        if answer.startswith(b"E"):
            print(f"error: {answer[1:].decode(errors='replace')}", file=sys.stderr)
        else:
            print("error: the adaptor daemon did not start", file=sys.stderr)
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(10)
            if code not in (0, EXIT_USAGE):
                errlog.seek(0)
                sys.stderr.write(errlog.read().decode(errors="replace"))
        if proc.poll() is None:
            proc.kill()
        return EXIT_USAGE if answer.startswith(b"E") and proc.returncode == EXIT_USAGE else EXIT_FAILED
    errlog.close()
    proc.returncode = 0  # it lives on in its own session; we do not wait for it
    code = client.perform(connection_file, "start")
    if code != EXIT_OK:
        # on_start failed or was canceled: do not leave a half-started daemon behind.
        with contextlib.redirect_stdout(sys.stderr):
            client.perform(connection_file, "stop")
    return code


def _read_ready(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return data
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk


if __name__ == "__main__":
    sys.exit(daemon_main())
