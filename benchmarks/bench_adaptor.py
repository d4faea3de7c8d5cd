#!/usr/bin/env python3
"""Adaptor runtime benchmark: this runtime versus openjd-adaptor-runtime 0.9.6, and cold versus warm Blender.

    .venv/bin/python benchmarks/bench_adaptor.py [--runs 20] [--frames 5] [--no-blender] [--no-openjd]

openjd-adaptor-runtime==0.9.6 is installed from PyPI into a venv of its own under
``$FDW_BENCH_CACHE`` (default ``~/.cache/fdw-bench``), created on first use.  Both runtimes run an
equivalent no-op adaptor and an adaptor whose run sleeps 0.3 s.  Measured, wall clock:

- ``daemon start``: the start command until it returns (median of 3);
- ``daemon run``: one whole client process per task (median and p90 of ``--runs``);
- in-process round trip: a request over the daemon's socket from this process (median of 200),
  a ping for ours, ``GET /heartbeat`` over HTTP for the reference;
- Blender: seconds per frame, cold ``blender -b scene.blend -f N`` per frame versus warm
  ``daemon run`` of the Blender adaptor (Workbench, 64x64), for ``--frames`` frames.

The figures are printed, not asserted.  Targets: no-op ``daemon run`` <= 60 ms, 0.3 s task <= 0.36 s,
``daemon start`` <= 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from flamenco_deadline_worker.testing.blender_scene import make_scene

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "adaptor_fixtures" / "sample.py"
OPENJD_VERSION = "0.9.6"

OPENJD_ADAPTOR = """
import time
from openjd.adaptor_runtime.adaptors import Adaptor, SemanticVersion


class BenchAdaptor(Adaptor):
    @property
    def integration_data_interface_version(self):
        return SemanticVersion(major=0, minor=1)

    def on_run(self, run_data):
        seconds = float(run_data.get("seconds", 0))
        if seconds:
            time.sleep(seconds)
"""

OPENJD_MAIN = """
from openjd.adaptor_runtime import EntryPoint
from openjd_bench_adaptor import BenchAdaptor

EntryPoint(BenchAdaptor).start()
"""

def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    r = subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=600)
    elapsed = time.perf_counter() - started
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... exited {r.returncode}: {r.stderr.decode()[-2000:]}")
    return elapsed


def median_p90(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def openjd_python() -> Path:
    cache = Path(os.environ.get("FDW_BENCH_CACHE") or Path.home() / ".cache" / "fdw-bench")
    venv = cache / f"openjd-{OPENJD_VERSION}"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import openjd.adaptor_runtime"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"# creating {venv} with openjd-adaptor-runtime=={OPENJD_VERSION} from PyPI", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"openjd-adaptor-runtime=={OPENJD_VERSION}"], check=True)
    return python


Command = Callable[[str], tuple[list[str], dict[str, str]]]


def bench_runtime(
    label: str, command: Command, work: Path, runs: int, roundtrip: Callable[[Path], dict[str, float]]
) -> dict[str, float]:
    out: dict[str, float] = {}
    python = command("noop")[0][0]
    out["floor"] = statistics.median(timed([python, "-c", "pass"]) for _ in range(runs))
    for adaptor, run_data in (("noop", "{}"), ("sleep", '{"seconds": 0.3}')):
        argv, env = command(adaptor)
        starts = []
        for i in range(3 if adaptor == "noop" else 1):
            # A fresh connection file each time: the reference removes its file only after stop returns.
            cf = work / f"{label}-{adaptor}-{i}.json"
            starts.append(timed([*argv, "daemon", "start", "--connection-file", str(cf)], env))
            if i < 2 and adaptor == "noop":
                timed([*argv, "daemon", "stop", "--connection-file", str(cf)], env)
        if adaptor == "noop":
            out["start"] = statistics.median(starts)
        run = [*argv, "daemon", "run", "--connection-file", str(cf), "--run-data", run_data]
        timed(run, env)  # warm the page cache
        latencies = [timed(run, env) for _ in range(runs)]
        out[f"{adaptor}_median"], out[f"{adaptor}_p90"] = median_p90(latencies)
        if adaptor == "noop":
            out.update(roundtrip(cf))
        out[f"{adaptor}_stop"] = timed([*argv, "daemon", "stop", "--connection-file", str(cf)], env)
    return out


def our_roundtrip(cf: Path, op: str = "ping") -> float:
    sys.path.insert(0, str(ROOT))
    from flamenco_deadline_worker.adaptor.protocol import LineReader, encode

    path = json.loads(cf.read_text())["socket"]
    samples = []
    for _ in range(200):
        started = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(encode({"op": op, "data": "{}"}))
            reader = LineReader(s)
            while True:
                msg = reader.next()
                assert msg is not None
                if msg.get("ev") == "end":
                    break
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def our_roundtrips(cf: Path) -> dict[str, float]:
    return {"roundtrip": our_roundtrip(cf, "ping"), "roundtrip_run": our_roundtrip(cf, "run")}


def openjd_roundtrips(cf: Path) -> dict[str, float]:
    return {"roundtrip": openjd_roundtrip(cf)}


def openjd_roundtrip(cf: Path) -> float:
    path = json.loads(cf.read_text())["socket"]
    request = b"GET /heartbeat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    samples = []
    for _ in range(200):
        started = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(request)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1."), data[:100]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bench_blender(work: Path, frames: int) -> dict[str, float]:
    scene = work / "scene.blend"
    make_scene(scene, frames=(1, 250))
    cold = []
    for frame in range(1, frames + 1):
        cold.append(
            timed(["blender", "--background", str(scene), "-o", str(work / "cold" / "frame_####"), "-f", str(frame)])
        )
    adaptor = [sys.executable, "-m", "flamenco_deadline_worker.adaptors.blender"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cf = work / "blender.json"
    init = json.dumps({"scene_file": str(scene), "output_path": str(work / "warm" / "frame_####")})
    start = timed([*adaptor, "daemon", "start", "--connection-file", str(cf), "--init-data", init], env)
    warm = [
        timed([*adaptor, "daemon", "run", "--connection-file", str(cf), "--run-data", json.dumps({"frame": f})], env)
        for f in range(1, frames + 1)
    ]
    timed([*adaptor, "daemon", "stop", "--connection-file", str(cf)], env)
    for f in range(1, frames + 1):
        assert (work / "warm" / f"frame_{f:04d}.png").exists() and (work / "cold" / f"frame_{f:04d}.png").exists()
    return {
        "cold_per_frame": sum(cold) / frames,
        "warm_start": start,
        "warm_per_frame": sum(warm) / frames,
        "warm_first": warm[0],
        "warm_rest": sum(warm[1:]) / max(1, frames - 1),
        "warm_amortised": (start + sum(warm)) / frames,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--no-blender", action="store_true")
    parser.add_argument("--no-openjd", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fdw-bench-"))
    try:
        names = {"noop": "Noop", "sleep": "Sleep"}

        def ours(adaptor: str) -> tuple[list[str], dict[str, str]]:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "SAMPLE_ADAPTOR": names[adaptor]}
            return [sys.executable, str(SAMPLE)], env

        print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.runs} runs each", flush=True)
        results: dict[str, dict[str, float]] = {}
        results["flamenco_deadline_worker.adaptor"] = bench_runtime("ours", ours, work, args.runs, our_roundtrips)
        if not args.no_openjd:
            python = openjd_python()
            # The reference runtime wants its adaptor in a package (it looks for config files beside it).
            package = work / "openjd_bench_adaptor"
            package.mkdir()
            (package / "__init__.py").write_text(OPENJD_ADAPTOR)
            (package / "__main__.py").write_text(OPENJD_MAIN)

            def reference(adaptor: str) -> tuple[list[str], dict[str, str]]:
                return [str(python), "-m", "openjd_bench_adaptor"], {**os.environ, "PYTHONPATH": str(work)}

            label = f"openjd-adaptor-runtime {OPENJD_VERSION}"
            results[label] = bench_runtime("openjd", reference, work, args.runs, openjd_roundtrips)
        print(f"# load average after: {os.getloadavg()[0]:.2f}", flush=True)

        rows = [
            ("daemon start (median of 3)", "start", 0.5),
            ("daemon run, no-op: median", "noop_median", 0.060),
            ("daemon run, no-op: p90", "noop_p90", None),
            ("daemon run, 0.3 s task: median", "sleep_median", 0.36),
            ("daemon run, 0.3 s task: p90", "sleep_p90", None),
            ("daemon stop", "noop_stop", None),
            ("in-process round trip: ping", "roundtrip", None),
            ("in-process round trip: no-op run", "roundtrip_run", None),
            ("floor: 'python -c pass' here", "floor", None),
        ]
        labels = list(results)
        print()
        print(f"{'seconds':34}" + "".join(f"{label:>36}" for label in labels) + f"{'target':>10}")
        for title, key, target in rows:
            cells = "".join(
                f"{results[label][key]:>36.4f}" if key in results[label] else f"{'n/a':>36}" for label in labels
            )
            print(f"{title:34}{cells}{(f'<= {target:g}' if target else ''):>10}")

        if not args.no_blender:
            if shutil.which("blender") is None:
                print("\n# blender not on PATH: Blender comparison skipped")
            else:
                b = bench_blender(work, args.frames)
                print(f"\nBlender 64x64 Workbench, {args.frames} frames, seconds per frame")
                print(f"  cold 'blender -b scene.blend -f N' per frame      {b['cold_per_frame']:8.3f}")
                print(f"  warm adaptor: daemon start (once)                 {b['warm_start']:8.3f}")
                print(f"  warm adaptor: daemon run, mean of all frames      {b['warm_per_frame']:8.3f}")
                print(
                    f"  warm adaptor: first frame / later frames          {b['warm_first']:8.3f} / {b['warm_rest']:.3f}"
                )
                print(f"  warm adaptor: (start + all runs) / frames         {b['warm_amortised']:8.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
