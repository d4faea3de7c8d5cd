"""Build the distribution zip: ``python packaging/build_zip.py [--dist DIR]``.

Writes ``<dist>/flamenco-deadline-worker-<version>.zip`` holding, in one folder of that name: the
wheel, ``worker.cfg.example``, ``flamenco-worker.service``, ``README.md`` (how to install from the
zip) and ``LICENSE``; and ``<zip>.sha256`` beside it (``sha256sum -c`` reads it).  Prints the zip's path.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "flamenco-deadline-worker"
# A fixed timestamp for the zip entries, so two builds of one tree give the same zip.
ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def version() -> str:
    text = (REPO / "flamenco_deadline_worker" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise SystemExit("build_zip: no __version__ in flamenco_deadline_worker/__init__.py")
    return match.group(1)


def build_wheel(out: Path) -> Path:
    """pip wheel of the repository, without dependencies; offline first, with build isolation if needed."""
    # setuptools builds in <repo>/build; start clean (no stale modules in the wheel) and leave no trace.
    build_dir = REPO / "build"
    existed = build_dir.exists()
    shutil.rmtree(build_dir / "lib", ignore_errors=True)
    try:
        return _pip_wheel(out)
    finally:
        if not existed:
            shutil.rmtree(build_dir, ignore_errors=True)


def _pip_wheel(out: Path) -> Path:
    base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(REPO)]
    attempts = [[*base[:4], "--no-build-isolation", *base[4:]], base]
    errors = []
    for argv in attempts:
        result = subprocess.run(argv, capture_output=True, text=True)
        wheels = sorted(out.glob("flamenco_deadline_worker-*.whl"))
        if result.returncode == 0 and wheels:
            return wheels[-1]
        errors.append(f"$ {' '.join(argv)}\n{result.stderr.strip()[-2000:]}")
    raise SystemExit("build_zip: could not build the wheel:\n" + "\n".join(errors))


def example_config() -> str:
    path = REPO / "worker.cfg.example"
    if path.exists():
        return path.read_text(encoding="utf-8")
    # Generated from the key table when the file is not in the tree.
    sys.path.insert(0, str(REPO))
    from flamenco_deadline_worker.config import KEYS, TABLE

    lines = ["# flamenco-worker configuration (TOML). Every key is shown with its default.", "", f"[{TABLE}]"]
    for key in KEYS:
        value = str(key.default).lower() if isinstance(key.default, bool) else repr(key.default).replace("'", '"')
        lines += ["", f"# {key.doc}", f"{key.name} = {value}"]
    return "\n".join(lines) + "\n"


def unit_file() -> str:
    path = REPO / "flamenco-worker.service"
    return path.read_text(encoding="utf-8")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(dist: Path) -> Path:
    ver = version()
    folder = f"{NAME}-{ver}"
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / f"{folder}.zip"
    with tempfile.TemporaryDirectory(prefix="fdw-wheel-") as tmp:
        wheel = build_wheel(Path(tmp))
        members: list[tuple[str, bytes, int]] = [
            (wheel.name, wheel.read_bytes(), 0o644),
            ("worker.cfg.example", example_config().encode(), 0o644),
            ("flamenco-worker.service", unit_file().encode(), 0o644),
            ("README.md", (REPO / "packaging" / "README.md").read_bytes(), 0o644),
            ("LICENSE", (REPO / "LICENSE").read_bytes(), 0o644),
        ]
        partial = target.with_suffix(".zip.partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data, mode in members:
                info = zipfile.ZipInfo(f"{folder}/{name}", date_time=ZIP_TIME)
                info.external_attr = (0o100000 | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        partial.replace(target)
    (dist / f"{target.name}.sha256").write_text(f"{sha256(target)}  {target.name}\n", encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="output directory (default: dist/)")
    args = parser.parse_args(argv)
    print(build(args.dist.absolute()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
