"""The Blender adaptor against Debian's real Blender: three frames in one warm Blender."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(
        shutil.which("blender") is None, reason="needs Debian's blender on PATH (apt-get install blender)"
    ),
]

from flamenco_deadline_worker.testing.blender_scene import make_scene  # noqa: E402

ADAPTOR = [sys.executable, "-m", "flamenco_deadline_worker.adaptors.blender"]


def adaptor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ADAPTOR, *args], capture_output=True, text=True, timeout=300)


def test_blender_adaptor_renders_three_frames_in_one_blender(tmp_path: Path) -> None:
    scene = tmp_path / "scene.blend"
    make_scene(scene)
    cf = tmp_path / "conn.json"
    init = {"scene_file": str(scene), "output_path": str(tmp_path / "out" / "frame_####")}
    r = adaptor("daemon", "start", "--connection-file", str(cf), "--init-data", json.dumps(init))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ready in" in r.stdout
    blender_pids = set()
    try:
        for frame in (1, 2, 3):
            r = adaptor("daemon", "run", "--connection-file", str(cf), "--run-data", json.dumps({"frame": frame}))
            assert r.returncode == 0, r.stdout + r.stderr
            lines = r.stdout.splitlines()
            assert f"openjd_status: rendering frame {frame}" in lines
            assert f"Saved: '{tmp_path}/out/frame_{frame:04d}.png'" in lines
            assert lines[-2:] == ["openjd_progress: 100", lines[-1]]
            pid_line = next(x for x in lines if x.startswith(f"INFO: rendering frame {frame} in Blender pid "))
            blender_pids.add(int(pid_line.rsplit(" ", 1)[1]))
        assert len(blender_pids) == 1, "all frames rendered by one warm Blender"
        for frame in (1, 2, 3):
            png = tmp_path / "out" / f"frame_{frame:04d}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        r = adaptor("daemon", "run", "--connection-file", str(cf), "--run-data", '{"frame": "x"}')
        assert r.returncode == 2 and "run-data: frame: expected integer" in r.stderr
    finally:
        r = adaptor("daemon", "stop", "--connection-file", str(cf))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Blender exited with code 0" in r.stdout
    (blender_pid,) = blender_pids
    assert not os.path.exists(f"/proc/{blender_pid}"), "on_stop closed Blender and reaped it"
    assert not cf.exists()


def test_blender_adaptor_bad_scene(tmp_path: Path) -> None:
    r = adaptor(
        "run", "--init-data", json.dumps({"scene_file": str(tmp_path / "missing.blend")}), "--run-data", '{"frame": 1}'
    )
    assert r.returncode == 1
    assert "openjd_fail: scene_file" in r.stdout and "does not exist" in r.stdout
    r = adaptor("run", "--init-data", '{"scene": "a.blend"}', "--run-data", '{"frame": 1}')
    assert r.returncode == 2 and "init-data: scene_file: is required but missing" in r.stderr
