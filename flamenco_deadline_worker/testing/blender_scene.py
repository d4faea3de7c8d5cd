"""A tiny Blender scene made by Blender itself, for the tests, the demo-style checks and the benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path

# Runs inside Blender; its arguments after "--" are: path, size in pixels, first frame, last frame.
SCENE_SCRIPT = """
import sys, bpy
path, size, first, last = sys.argv[sys.argv.index("--") + 1:]
scene = bpy.context.scene
scene.render.engine = "BLENDER_WORKBENCH"
scene.render.resolution_x = scene.render.resolution_y = int(size)
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.frame_start, scene.frame_end = int(first), int(last)
bpy.ops.wm.save_as_mainfile(filepath=path)
"""


def make_scene(path: Path, *, size: int = 64, frames: tuple[int, int] = (1, 5), blender: str = "blender") -> Path:
    """Save a Workbench scene of ``size`` x ``size`` pixels with the default cube at ``path``."""
    argv = [blender, "--background", "--factory-startup", "--python-expr", SCENE_SCRIPT, "--",
            str(path), str(size), str(frames[0]), str(frames[1])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if not path.is_file():
        raise RuntimeError(
            f"Blender did not save {path} (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return path
