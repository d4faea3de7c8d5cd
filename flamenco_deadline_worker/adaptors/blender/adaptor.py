"""BlenderAdaptor: ``on_start`` launches Blender once with a small client script that connects back over a
private UNIX socket; ``on_run`` renders one frame in that Blender; ``on_stop`` closes it."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import socket
import tempfile
import threading
import time
from typing import Any

from ... import __version__
from ...adaptor._process import RunningProcess
from ...adaptor.adaptor import Adaptor, AdaptorError, ManagedProcess
from ...adaptor.protocol import LineReader, encode, peer_uid

DONE_MARKER = "FDW_BLENDER_DONE"  # printed by blender_client.py after each action
CLIENT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender_client.py")

# Cycles: "Fra:1 Mem:9.04M (Peak 10.83M) | Time:00:00.00 | ... | Sample 3/16"; tiles: "Rendered 3/16 Tiles".
_PROGRESS = re.compile(r"\|\s*(?:Sample|Rendered)\s+(\d+)\s*/\s*(\d+)")
_SAVED = re.compile(r"^Saved: '(.*)'")


class _BlenderProcess(ManagedProcess):
    """Blender's output: passed on, parsed for progress, and watched for the end-of-action marker."""

    def __init__(self, adaptor: BlenderAdaptor, argv: list[str]) -> None:
        super().__init__(argv[0], argv[1:], environment={"PYTHONUNBUFFERED": "1"})
        self._adaptor = adaptor
        self.markers: set[str] = set()
        self.saved: list[str] = []
        self.cond = threading.Condition()

    def on_output_line(self, line: str) -> None:
        if line.startswith(DONE_MARKER):
            with self.cond:
                self.markers.add(line[len(DONE_MARKER) :].strip())
                self.cond.notify_all()
            return
        super().on_output_line(line)
        match = _PROGRESS.search(line)
        if match and int(match[2]) > 0:
            self._adaptor.update_status(progress=min(99.0, 100.0 * int(match[1]) / int(match[2])))
        saved = _SAVED.match(line)
        if saved:
            self.saved.append(saved[1])

    def wait_marker(self, seq: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: str(seq) in self.markers, timeout)


class BlenderAdaptor(Adaptor):
    name = "Blender"
    version = __version__
    init_data_schema = {
        "type": "object",
        "properties": {
            "scene_file": {"type": "string", "minLength": 1, "description": "the .blend file to open"},
            "output_path": {"type": "string", "description": "render output path, e.g. /out/frame_####"},
            "output_format": {"type": "string", "description": "PNG, OPEN_EXR, JPEG, ... (default: the scene's)"},
            "args": {"type": "array", "items": {"type": "string"}, "description": "extra Blender arguments"},
        },
        "required": ["scene_file"],
        "additionalProperties": False,
    }
    run_data_schema = {
        "type": "object",
        "properties": {"frame": {"type": "integer"}},
        "required": ["frame"],
        "additionalProperties": False,
    }
    config_schema = {
        "type": "object",
        "properties": {
            "blender_executable": {"type": "string", "minLength": 1},
            "blender_args": {"type": "array", "items": {"type": "string"}},
            "startup_timeout_seconds": {"type": "number", "exclusiveMinimum": 0},
            "stop_timeout_seconds": {"type": "number", "exclusiveMinimum": 0},
        },
        "additionalProperties": False,
    }
    default_config = {
        "blender_executable": "blender",
        "blender_args": ["--background", "--factory-startup"],
        "startup_timeout_seconds": 120,
        "stop_timeout_seconds": 30,
    }
    cancel_grace = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dir: str | None = None
        self._process: _BlenderProcess | None = None
        self._running: RunningProcess | None = None
        self._shutdown_lock = threading.Lock()
        self._conn: socket.socket | None = None
        self._reader: LineReader | None = None
        self._seq = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def on_start(self) -> None:
        self._launch()

    def on_run(self, run_data: dict[str, Any]) -> None:
        if self._conn is None:
            self.log.info("Blender is not running (canceled or crashed before): starting it again")
            self._launch()
        assert self._process is not None and self._running is not None
        frame = run_data["frame"]
        self._seq += 1
        seq = self._seq
        self.update_status(progress=0, status_message=f"rendering frame {frame}")
        self.log.info("rendering frame %d in Blender pid %d", frame, self._running.pid)
        request: dict[str, object] = {"action": "render", "seq": seq, "frame": frame}
        if self.init_data.get("output_path"):
            request["output_path"] = self.map_path(self.init_data["output_path"])
        if self.init_data.get("output_format"):
            request["output_format"] = self.init_data["output_format"]
        reply = self._request(request)
        # The marker follows all of the render's output on Blender's stdout: wait for it.
        if not self._process.wait_marker(seq, 10.0):
            self.log.warning("Blender's output for frame %d may be incomplete", frame)
        if reply.get("event") != "done":
            raise AdaptorError(f"Blender failed to render frame {frame}: {reply.get('message', reply)}")
        raw_files = reply.get("files")
        files = [str(f) for f in raw_files] if isinstance(raw_files, list) else []
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise AdaptorError(f"frame {frame}: Blender reported no error, but {', '.join(missing)} does not exist")
        for path in files:
            self.log.info("frame %d written: %s", frame, path)
        self.update_status(progress=100, status_message=f"frame {frame} done in {reply.get('seconds')} s")

    def on_stop(self) -> None:
        if self._conn is not None and self._running is not None:
            with contextlib.suppress(OSError, AdaptorError):
                self._request({"action": "quit"})
            timeout = float(self.config["stop_timeout_seconds"])
            try:
                code = self._running.wait(timeout)
                self.log.info("Blender exited with code %d", code)
            except Exception:  # noqa: BLE001 - it did not quit: terminate it
                self.log.warning("Blender did not quit within %g s; terminating it", timeout)
        self._shutdown()

    def on_cleanup(self) -> None:
        self._shutdown()

    def on_cancel(self) -> None:
        # A render cannot be interrupted through bpy: end this Blender; the next run starts a new one.
        self.log.info("canceling: terminating Blender")
        self._shutdown()

    # -- internals -------------------------------------------------------------------------------
    def _launch(self) -> None:
        config = self.config
        scene = self.map_path(self.init_data["scene_file"])
        if not os.path.isfile(scene):
            raise AdaptorError(f"scene_file {scene!r} does not exist")
        exe = shutil.which(config["blender_executable"])
        if exe is None:
            raise AdaptorError(f"blender_executable {config['blender_executable']!r} was not found on PATH")
        self._dir = tempfile.mkdtemp(prefix="fdw-blender-")
        sock_path = os.path.join(self._dir, "blender.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(sock_path)
            os.chmod(sock_path, 0o600)
            listener.listen(1)
            argv = [
                exe,
                *config["blender_args"],
                scene,
                *self.init_data.get("args", []),
                "--python",
                CLIENT_SCRIPT,
                "--",
                sock_path,
            ]
            self._process = _BlenderProcess(self, argv)
            started = time.monotonic()
            self._running = self.start_process(self._process)
            self._conn = self._accept(listener, float(config["startup_timeout_seconds"]))
        except BaseException:
            self._shutdown()
            raise
        finally:
            listener.close()
        self._reader = LineReader(self._conn)
        hello = self._next_message()
        self.log.info(
            "Blender %s ready in %.2f s (pid %d) with %s",
            hello.get("blender"),
            time.monotonic() - started,
            self._running.pid,
            hello.get("file"),
        )

    def _accept(self, listener: socket.socket, timeout: float) -> socket.socket:
        """Wait for Blender's client script to connect, or for Blender to exit, whichever comes first."""
        assert self._running is not None
        pidfd = os.pidfd_open(self._running.pid) if hasattr(os, "pidfd_open") else None
        try:
            deadline = time.monotonic() + timeout
            watch = [listener.fileno()] + ([pidfd] if pidfd is not None else [])
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AdaptorError(f"Blender did not connect within {timeout:g} s (startup_timeout_seconds)")
                # Without pidfd (old kernels) look at the process once a second.
                readable, _, _ = select.select(watch, [], [], remaining if pidfd is not None else min(remaining, 1))
                if listener.fileno() in readable:
                    conn, _ = listener.accept()
                    if peer_uid(conn) != os.geteuid():
                        conn.close()
                        continue
                    return conn
                if self._running.returncode is not None:
                    self._running.output_done(5)
                    raise AdaptorError(
                        f"Blender exited with code {self._running.returncode} before it was ready; see its output above"
                    )
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _next_message(self) -> dict[str, object]:
        assert self._reader is not None
        try:
            msg = self._reader.next()
        except (OSError, ValueError) as exc:
            msg = None
            reason = str(exc)
        else:
            reason = "connection closed"
        if msg is None:
            code = self._running.returncode if self._running is not None else None
            self._shutdown()
            raise AdaptorError(f"lost Blender ({reason}; exit code {code})")
        return msg

    def _request(self, message: dict[str, object]) -> dict[str, object]:
        if self._conn is None:
            raise AdaptorError("Blender is not running")
        try:
            self._conn.sendall(encode(message))
        except OSError as exc:
            self._shutdown()
            raise AdaptorError(f"lost Blender: {exc}") from None
        return self._next_message()

    def _shutdown(self) -> None:
        with self._shutdown_lock:
            self._shutdown_locked()

    def _shutdown_locked(self) -> None:
        conn, self._conn, self._reader = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        running, self._running = self._running, None
        if running is not None:
            running.terminate_tree(self.cancel_grace)
            running.output_done(5)
            self.forget_process(running)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
