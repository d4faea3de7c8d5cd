"""`flamenco-worker demo` end to end: a real subprocess, the outage in the middle, nothing lost, no leftovers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from conftest import worker_executable


def run_demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The demo with its own temporary directory, so what it leaves behind can be seen."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_WORKER_")}
    env["TMPDIR"] = str(tmp)
    result = subprocess.run([*worker_executable(), "demo", "--timeout", "240", *args], capture_output=True,
                            text=True, timeout=300, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    return result, tmp


def test_demo_shows_the_outage_and_loses_nothing_and_cleans_up(tmp_path: Path) -> None:
    result, tmp = run_demo(tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    down = out.index("the Manager goes away for 3 s")
    assert "Manager down: the task keeps running" in out[down:]
    back = out.index("the Manager is back", down)
    assert re.search(r"task 'print-2500-lines' completed; the worker caught up", out[back:]), out
    assert "print-2500-lines       completed  2500 of 2500 lines, in order" in out
    assert "Nothing lost: all 2500 lines of 'print-2500-lines' reached the Manager in order" in out
    if shutil.which("blender"):
        assert re.search(r"render-frame-1 +completed +frame frame_0001\.png rendered \(\d+ bytes\) and its preview",
                         out), out
    else:
        assert "blender is not installed" in out
    assert re.search(r"job 'flamenco-worker demo': completed in [\d.]+ s; worker exited with code 0", out), out
    assert "removed; --keep keeps it" in out
    assert list(tmp.iterdir()) == [], "the demo left its folder behind"


def test_demo_keep_keeps_the_folder_with_the_logs(tmp_path: Path) -> None:
    result, tmp = run_demo(tmp_path, "--keep")
    assert result.returncode == 0, result.stdout + result.stderr
    kept = re.search(r"demo folder kept: (\S+)", result.stdout)
    assert kept, result.stdout
    folder = Path(kept[1])
    assert folder.parent == tmp
    assert (folder / "home" / "flamenco-worker-logs" / "worker-agent.log").is_file()
    assert (folder / "home" / "flamenco-worker.db").is_file()
