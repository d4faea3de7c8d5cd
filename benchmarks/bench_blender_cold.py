"""What a cold `blender --background` start costs per frame on this machine.

The Flamenco blender-render command starts Blender once per task; a chunk of one frame per task pays the
whole start-up for every frame.  This prints, for a tiny Workbench scene (64x64):

* cold:  one `blender -b scene.blend -f N` per frame (median seconds per frame)
* batch: one Blender rendering all frames (seconds per frame)
* start-up overhead per frame = cold - batch: what a warm Blender (the adaptor issue) can save.

Usage: python benchmarks/bench_blender_cold.py [--frames 5] [--runs 5] [--blender /usr/bin/blender]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flamenco_deadline_worker.testing.blender_scene import make_scene


def run(argv: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed with {result.returncode}:\n{result.stdout[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5, help="cold starts to time (median reported)")
    parser.add_argument("--blender", default=shutil.which("blender") or "blender")
    args = parser.parse_args()
    if shutil.which(args.blender) is None:
        sys.exit(f"{args.blender!r} not found; on Debian: apt-get install -y blender")

    with tempfile.TemporaryDirectory(prefix="bench-blender-") as tmp:
        scene = Path(tmp) / "scene.blend"
        out = str(Path(tmp) / "f_####")
        make_scene(scene, frames=(1, 250), blender=args.blender)
        base = [args.blender, "-b", "-y", str(scene), "--render-output", out, "--render-format", "PNG"]
        run([*base, "-f", "1"])  # warm the page cache: we measure Blender, not the disk

        cold = [run([*base, "-f", str(1 + i % args.frames)]) for i in range(args.runs)]
        batch = run([*base, "-s", "1", "-e", str(args.frames), "-a"])
        version = subprocess.run([args.blender, "--version"], capture_output=True, text=True).stdout.split("\n")[0]

    cold_median = statistics.median(cold)
    batch_per_frame = batch / args.frames
    print(f"{version}, Workbench 64x64 frame, {args.runs} cold runs, batch of {args.frames} frames")
    print(f"cold start + 1 frame : median {cold_median:.2f} s  (min {min(cold):.2f}, max {max(cold):.2f})")
    print(f"one Blender, {args.frames} frames: {batch:.2f} s = {batch_per_frame:.2f} s/frame")
    print(f"cold start overhead  : {cold_median - batch_per_frame:.2f} s per frame "
          f"({cold_median / batch_per_frame:.1f}x the batched cost)")


if __name__ == "__main__":
    main()
