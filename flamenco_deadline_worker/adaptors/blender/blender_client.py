"""Runs inside Blender (``blender --background scene.blend --python blender_client.py -- SOCKET``).

Connects back to the adaptor over its UNIX socket and executes actions, one JSON line each:
``{"action": "render", "seq": N, "frame": F, "output_path": P?, "output_format": X?}`` and
``{"action": "quit"}``.  After each action it flushes Blender's C stdio and prints a marker line, so
that the adaptor has forwarded all of the render's output before it reports the task done.
"""

from __future__ import annotations

import ctypes
import json
import socket
import sys
import time
import traceback
from typing import Any

import bpy  # type: ignore[import-not-found]

DONE_MARKER = "FDW_BLENDER_DONE"

_libc: Any = None


def flush_output() -> None:
    global _libc
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None)
        _libc.fflush(None)
    except (OSError, AttributeError):
        pass


def render(msg: dict[str, Any]) -> list[str]:
    scene = bpy.context.scene
    if msg.get("output_path"):
        scene.render.filepath = msg["output_path"]
    if msg.get("output_format"):
        scene.render.image_settings.file_format = msg["output_format"]
    frame = int(msg["frame"])
    start, end = scene.frame_start, scene.frame_end
    # Exactly what "blender -f N" does: an animation render of one frame, same file naming.
    scene.frame_start = scene.frame_end = frame
    try:
        bpy.ops.render.render(animation=True, scene=scene.name)
    finally:
        scene.frame_start, scene.frame_end = start, end
    return [bpy.path.abspath(scene.render.frame_path(frame=frame))]


def main() -> None:
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    if not argv:
        raise SystemExit("blender_client.py: usage: blender ... --python blender_client.py -- SOCKET")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(argv[0])

    def send(message: dict[str, Any]) -> None:
        sock.sendall(json.dumps(message).encode() + b"\n")

    send({"event": "ready", "blender": bpy.app.version_string, "file": bpy.data.filepath})
    for raw in sock.makefile("rb"):
        msg = json.loads(raw)
        action = msg.get("action")
        if action == "quit":
            send({"event": "bye"})
            break
        seq = msg.get("seq")
        started = time.monotonic()
        try:
            if action != "render":
                raise ValueError(f"unknown action {action!r}")
            files = render(msg)
            reply: dict[str, Any] = {"event": "done", "seq": seq, "files": files}
        except Exception as exc:  # noqa: BLE001 - reported to the adaptor
            traceback.print_exc()
            reply = {"event": "error", "seq": seq, "message": f"{type(exc).__name__}: {exc}"}
        reply["seconds"] = round(time.monotonic() - started, 3)
        flush_output()
        print(f"{DONE_MARKER} {seq}", flush=True)
        flush_output()
        send(reply)
    sock.close()


main()
