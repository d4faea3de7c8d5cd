"""`flamenco-worker demo`: the point of the worker, shown on this machine in a few seconds.

Starts the local Manager on 127.0.0.1 and a real `flamenco-worker` process, and submits a job whose
second task prints numbered lines for a few seconds.  In the middle of that task the Manager goes away
for a few seconds and comes back on the same port.  The worker keeps running the task, queues what
it cannot deliver in its SQLite file, and delivers it once the Manager is back.  The summary checks
that every line reached the Manager, in order.  When Blender is installed, a last task renders one
frame.  The demo's temporary folder is removed at the end unless --keep; a --home given is left alone.

Exit codes: 0 the job completed and nothing was lost; 1 otherwise (the folder is then kept).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flamenco_deadline_worker.testing.manager import LocalManager
    from flamenco_deadline_worker.testing.records import TaskRecord

EXIT_OK = 0
EXIT_DEMO_FAILED = 1

CHATTY_LINES = 2500
CHATTY_PREFIX = "chatty line "
OUTAGE_SECONDS = 3.0
# The outage starts once this many of the chatty task's lines reached the Manager.
OUTAGE_AFTER_LINES = 200
FRAME = 1

# Runs inside Blender before it renders: a small, fast Workbench render of the default scene.
BLENDER_SETUP = (
    "import bpy; s = bpy.context.scene; s.render.engine = 'BLENDER_WORKBENCH'; "
    "s.render.resolution_x = s.render.resolution_y = 128; s.render.resolution_percentage = 100"
)


def chatty_script() -> str:
    """Prints CHATTY_LINES numbered lines in bursts, about five seconds in all."""
    return (
        "import time\n"
        f"for i in range(1, {CHATTY_LINES + 1}):\n"
        f"    print(f'{CHATTY_PREFIX}{{i:05d}}', flush=True)\n"
        "    if i % 50 == 0:\n"
        "        time.sleep(0.1)\n"
    )


def demo_tasks(render_dir: Path | None) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = [
        {
            "name": "hello",
            "task_type": "misc",
            "commands": [{"name": "echo", "parameters": {"message": "Hello from the flamenco-worker demo"},
                          "total_step_count": 1}],
        },
        {
            "name": f"print-{CHATTY_LINES}-lines",
            "task_type": "misc",
            "commands": [{"name": "exec", "parameters": {"exe": sys.executable, "args": ["-c", chatty_script()]},
                          "total_step_count": 1}],
        },
    ]
    if render_dir is not None:
        tasks.append({
            "name": f"render-frame-{FRAME}",
            "task_type": "blender",
            "commands": [{"name": "blender-render", "total_step_count": 1, "parameters": {
                "exe": "blender",
                "exeArgs": "-b -y --factory-startup",
                "blendfile": "",
                "args": ["--python-expr", BLENDER_SETUP, "--render-output", str(render_dir / "frame_####"),
                         "--render-format", "PNG", "--render-frame", str(FRAME)],
            }}],
        })
    return tasks


def worker_command(manager_url: str, home: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "flamenco_deadline_worker", "--manager", manager_url, "--home", str(home),
            "--config", str(config)]


def numbered_lines(log: str, prefix: str = CHATTY_PREFIX) -> list[int]:
    """The numbers of the ``<prefix><n>`` lines of a task log, in arrival order."""
    return [int(line[len(prefix):]) for line in log.splitlines() if line.startswith(prefix)]


def first_arrivals(numbers: list[int]) -> list[int]:
    """Each number at its first arrival.  Delivery is at-least-once: a batch in flight when the
    connection broke may arrive twice, so a repeat is no fault, a gap or a reordering is."""
    firsts: list[int] = []
    seen: set[int] = set()
    for n in numbers:
        if n not in seen:
            seen.add(n)
            firsts.append(n)
    return firsts


def line_check(log: str, expected: int) -> tuple[int, int, bool, int]:
    """(distinct lines received, missing, first arrivals in order, repeats)."""
    numbers = numbered_lines(log)
    firsts = first_arrivals(numbers)
    missing = len(set(range(1, expected + 1)) - set(firsts))
    return len(firsts), missing, firsts == sorted(firsts), len(numbers) - len(firsts)


def backlog_text(db: Path) -> str:
    from flamenco_deadline_worker.status import human_size, read_backlog

    backlog = read_backlog(db)
    if backlog["count"] is None:
        return "the worker's queue cannot be read right now"
    return f"{backlog['count']} update(s), {human_size(backlog['bytes'])}, wait in the worker's queue on disk"


class Demo:
    def __init__(self, folder: Path, home: Path, timeout: float) -> None:
        self.folder = folder
        self.home = home
        self.timeout = timeout
        self.started = time.monotonic()
        blender = shutil.which("blender")
        self.render_dir = folder / "render" if blender else None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f} s] {text}", flush=True)

    async def run(self) -> int:
        from flamenco_deadline_worker.testing.manager import LocalManager

        self.home.mkdir(parents=True, exist_ok=True)
        empty_config = self.folder / "demo-worker.cfg"
        empty_config.write_text("# flamenco-worker demo: no settings beyond the command line\n")
        manager = LocalManager()
        url = await manager.start("127.0.0.1", 0)
        self.say(f"local Flamenco Manager listening on {url}")
        if self.render_dir is None:
            self.say("blender is not installed: the job has no render task (apt-get install blender adds one)")
        job_id = manager.submit_job("flamenco-worker demo", demo_tasks(self.render_dir))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMENCO_WORKER_")}
        env.update(FLAMENCO_WORKER_TASK_POLL_INTERVAL_SECONDS="0.5",
                   FLAMENCO_WORKER_PUSH_LOG_MAX_INTERVAL_SECONDS="0.2")
        output = self.folder / "worker-output.txt"
        with output.open("wb") as out:
            worker = await asyncio.create_subprocess_exec(
                *worker_command(url, self.home, empty_config), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=out,
            )
        self.say(f"started flamenco-worker (pid {worker.pid}); job {job_id} has "
                 f"{len(manager.job_tasks(job_id))} tasks")
        code: int | None = None
        try:
            await self._outage_during_chatty_task(manager, job_id)
            await manager.wait_for(lambda: manager.job(job_id).status in ("completed", "failed"),
                                   max(1.0, self.timeout - (time.monotonic() - self.started)))
        except TimeoutError as exc:
            self.say(f"the demo did not finish within {self.timeout:g} s: {exc}")
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(worker.wait(), 60)
            except asyncio.TimeoutError:
                worker.kill()
                code = await worker.wait()
            await manager.stop()
        return self._summary(manager, job_id, code)

    async def _outage_during_chatty_task(self, manager: LocalManager, job_id: str) -> None:
        chatty = manager.job_tasks(job_id)[1]
        budget = self.timeout - (time.monotonic() - self.started)
        await manager.wait_for(lambda: len(numbered_lines(chatty.log)) >= OUTAGE_AFTER_LINES, budget)
        self.say(f"task {chatty.name!r} is running; {len(numbered_lines(chatty.log))} of its lines "
                 "reached the Manager so far")
        await manager.go_down()
        down_at = time.monotonic()
        self.say(f"the Manager goes away for {OUTAGE_SECONDS:g} s (connections refused)")
        db = self.home / "flamenco-worker.db"
        while (left := OUTAGE_SECONDS - (time.monotonic() - down_at)) > 0:
            await asyncio.sleep(min(1.0, left))
            self.say(f"  Manager down: the task keeps running; {backlog_text(db)}")
        await manager.come_back()
        back_at = time.monotonic()
        self.say(f"the Manager is back on {manager.url}")
        budget = self.timeout - (time.monotonic() - self.started)
        await manager.wait_for(lambda: chatty.status in ("completed", "failed"), budget)
        self.say(f"task {chatty.name!r} {chatty.status}; the worker caught up "
                 f"{time.monotonic() - back_at:.1f} s after the Manager came back")

    def _summary(self, manager: LocalManager, job_id: str, code: int | None) -> int:
        job = manager.job(job_id)
        tasks = manager.job_tasks(job_id)
        print(f"\njob {job.name!r}: {job.status} in {time.monotonic() - self.started:.1f} s; "
              f"worker exited with code {code}")
        print(f"{'task':<22} {'status':<10} what reached the Manager")
        ok = job.status == "completed" and code == 0
        for task in tasks:
            detail, task_ok = self._task_detail(task)
            ok = ok and task_ok
            print(f"{task.name:<22} {task.status:<10} {detail}")
        chatty = tasks[1]
        distinct, missing, in_order, _ = line_check(chatty.log, CHATTY_LINES)
        if missing == 0 and in_order and distinct == CHATTY_LINES:
            print(f"\nNothing lost: all {CHATTY_LINES} lines of {chatty.name!r} reached the Manager in order, "
                  f"although it was down for {OUTAGE_SECONDS:g} s in the middle of the task.")
        else:
            print(f"\nLOST: {missing} of {CHATTY_LINES} lines of {chatty.name!r} never reached the Manager"
                  + ("" if in_order else ", and lines arrived out of order"))
        return EXIT_OK if ok else EXIT_DEMO_FAILED

    def _task_detail(self, task: TaskRecord) -> tuple[str, bool]:
        if task.name.startswith("print-"):
            distinct, missing, in_order, repeats = line_check(task.log, CHATTY_LINES)
            text = f"{distinct} of {CHATTY_LINES} lines, {'in order' if in_order else 'OUT OF ORDER'}"
            if repeats:
                text += f" ({repeats} sent twice around the outage, which delivery at least once allows)"
            return text, missing == 0 and in_order
        if task.name.startswith("render-") and self.render_dir is not None:
            frame = self.render_dir / f"frame_{FRAME:04d}.png"
            if not frame.is_file():
                return f"no frame at {frame}; see the task log", False
            preview = "and its preview image" if task.previews_received else "(no preview image arrived)"
            return f"frame {frame.name} rendered ({frame.stat().st_size} bytes) {preview}", True
        return f"{task.log_line_count} log line(s)", task.status == "completed"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="flamenco-worker demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path,
                        help="worker home for the demo, kept afterwards (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the demo's folder (logs, queue file, frame)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="flamenco-worker-demo-"))
    home = args.home.absolute() if args.home else folder / "home"
    code = EXIT_DEMO_FAILED
    try:
        code = asyncio.run(Demo(folder, home, args.timeout).run())
    finally:
        keep = args.keep or code != EXIT_OK
        if keep:
            logs = home / "flamenco-worker-logs"
            print(f"\ndemo folder kept: {folder}\nagent log:  {logs / 'worker-agent.log'}\n"
                  f"task logs:  {logs}/<job id>/<task id>.log")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"\n(demo folder {folder} removed; --keep keeps it)")
            if args.home:
                print(f"worker home kept: {home}")
    return code
