"""The distribution zip: build it, unzip it, install its wheel into a fresh venv and run the demo from there.

Slow (a wheel build and a pip install that fetches aiohttp and friends from the package index), but CI runs it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from flamenco_deadline_worker import __version__

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_zip_builds_installs_and_runs_the_demo(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, str(REPO / "packaging" / "build_zip.py"), "--dist", str(dist)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    name = f"flamenco-deadline-worker-{__version__}"
    zip_path = dist / f"{name}.zip"
    assert build.stdout.strip() == str(zip_path)

    digest, listed = (dist / f"{name}.zip.sha256").read_text().split()
    assert listed == zip_path.name and digest == hashlib.sha256(zip_path.read_bytes()).hexdigest()

    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(zf.namelist())
        zf.extractall(unpacked)
    folder = unpacked / name
    wheel = f"flamenco_deadline_worker-{__version__}-py3-none-any.whl"
    assert names == sorted(f"{name}/{n}" for n in (
        wheel, "worker.cfg.example", "flamenco-worker.service", "README.md", "LICENSE"))
    readme = (folder / "README.md").read_text()
    assert "pip install ./flamenco_deadline_worker-" in readme and "No telemetry" in readme
    assert "Type=notify" in (folder / "flamenco-worker.service").read_text()
    assert "[flamenco-worker]" in (folder / "worker.cfg.example").read_text()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                              str(folder / wheel)], capture_output=True, text=True, timeout=600, env=env, cwd=folder)
    assert install.returncode == 0, install.stderr

    command = venv / "bin" / "flamenco-worker"
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True, timeout=60, env=env,
                             cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"flamenco-worker {__version__}"
    # The installed package, not this checkout, answers.
    probe = "import flamenco_deadline_worker as m; print(m.__file__)"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", probe],
                           capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert str(venv) in where.stdout, where.stdout

    demo = subprocess.run([str(command), "demo", "--home", str(tmp_path / "demo-home"), "--timeout", "180"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "completed" in demo.stdout
    assert (tmp_path / "demo-home" / "flamenco-worker-logs" / "worker-agent.log").exists()
