"""The producer side of the queue under a failing disk (a real, small tmpfs mount) and under a flood:
a failed commit keeps its lines, room() holds readers back while the buffer is full, put() waits for the
disk, and rows fit in one task update."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from disks import fill, tmpfs
from test_queue import ScriptedSink, open_queue

from flamenco_deadline_worker.core.model import Update

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_disk() -> Iterator[Path]:
    with tmpfs("4m", prefix="fdw-small-disk-") as mount:
        yield mount


async def test_a_full_disk_keeps_every_line_holds_readers_back_and_recovers(small_disk: Path) -> None:
    sink = ScriptedSink()
    queue = await open_queue(small_disk / "q.db", sink, push_log_max_bytes=64 * 1024)
    problems: list[str | None] = []
    queue.on_problem = problems.append
    queue.pending_max_bytes = 512 * 1024
    await queue.put(Update("t", status="active"))
    ballast = fill(small_disk, 64 * 1024)

    # A reader feeding lines as fast as room() lets it: it must end up waiting, the buffer bounded.
    async def reader() -> int:
        n = 0
        while True:
            for _ in range(100):
                n += 1
                queue.put_log("t", f"line {n}\n")
            await queue.room()

    feeding = asyncio.ensure_future(reader())
    try:
        for _ in range(600):
            if problems and not queue._room.is_set():
                break
            await asyncio.sleep(0.05)
        assert problems and "is full" in (problems[0] or ""), problems
        assert not queue._room.is_set(), "the reader is held back"
        assert queue.backlog_bytes < 8 * 2**20
        assert queue._pending_bytes < queue.pending_max_bytes + 100 * 20
        # A status update waits for the disk instead of failing the task.
        final = asyncio.ensure_future(queue.put(Update("t", status="completed")))
        await asyncio.sleep(0.5)
        assert not final.done()
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        ballast.unlink()
        await asyncio.wait_for(final, 60)
    finally:
        feeding.cancel()
    assert problems[-1] is None, "status hears that the queue works again"

    drain = asyncio.ensure_future(queue.run_drain())
    await sink.wait(lambda: any(u.status == "completed" for u in sink.delivered), 60)
    drain.cancel()
    await asyncio.gather(drain, return_exceptions=True)
    await queue.close()
    lines = sink.log_of("t").splitlines()
    assert lines == [f"line {i}" for i in range(1, len(lines) + 1)], "every line, in order, none lost"
    assert len(lines) > 10_000


async def test_rows_fit_in_one_task_update(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    queue = await open_queue(db, ScriptedSink(), push_log_max_bytes=1000)
    for i in range(300):
        queue.put_log("a" if i % 100 < 50 else "b", f"{i:09d}\n")
    queue.put_log("a", "".join(f"{i:099d}\n" for i in range(30)))  # 3,000 characters in one call
    queue.put_log("a", "y" * 2500 + "\n")  # one line longer than the limit: a row of its own
    queue.put_log("b", "after the long line\n")
    await queue.commit_logs()
    await queue.close()
    with sqlite3.connect(db) as conn:
        rows = [(t, json.loads(p)["log"]) for t, p in conn.execute("SELECT task_id, payload FROM updates ORDER BY id")]
    assert rows[-1] == ("b", "after the long line\n")
    assert rows[-2] == ("a", "y" * 2500 + "\n")
    assert all(len(text) <= 1000 for _, text in rows[:-2]), [len(t) for _, t in rows]
    assert all(text.endswith("\n") for _, text in rows)
    assert "".join(text for task, text in rows if task == "a") == "".join(
        [f"{i:09d}\n" for i in range(300) if i % 100 < 50]
        + [f"{i:099d}\n" for i in range(30)] + ["y" * 2500 + "\n"]
    )
    assert "".join(text for task, text in rows if task == "b") == "".join(
        [f"{i:09d}\n" for i in range(300) if i % 100 >= 50] + ["after the long line\n"]
    )


# Another writer (an sqlite3 shell, a backup tool) in the middle of a long transaction.
HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
"""


async def test_a_lock_held_by_another_process_is_waited_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flamenco_deadline_worker.upstream import store

    monkeypatch.setattr(store, "BUSY_TIMEOUT_SECONDS", 0.2)
    sink = ScriptedSink()
    db = tmp_path / "q.db"
    queue = await open_queue(db, sink)
    problems: list[str | None] = []
    queue.on_problem = problems.append
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_LOCK, str(db), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert (await asyncio.wait_for(holder.stdout.readline(), 60)).strip() == b"locked"
        for i in range(1000):
            queue.put_log("t", f"line {i}\n")
        assert await queue.commit_logs() is False
        assert problems and "holds a lock" in (problems[-1] or ""), problems
        final = asyncio.ensure_future(queue.put(Update("t", status="completed")))
        holder.stdin.write(b"go\n")
        await holder.stdin.drain()
        await asyncio.wait_for(final, 60)
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
    assert problems[-1] is None
    drain = asyncio.ensure_future(queue.run_drain())
    await sink.wait(lambda: any(u.status == "completed" for u in sink.delivered), 60)
    drain.cancel()
    await asyncio.gather(drain, return_exceptions=True)
    await queue.close()
    assert sink.log_of("t") == "".join(f"line {i}\n" for i in range(1000))


@needs_root
async def test_deadline_session_output_waits_for_room_too(small_disk: Path) -> None:
    """openjd-sessions reads an action's output on its own thread and logs each line: that thread waits
    while the queue cannot take more, so the action's process blocks on its pipe as with Flamenco tasks."""
    from openjd.sessions import LOG

    from flamenco_deadline_worker.backends.deadline.logroute import LogRouter

    sink = ScriptedSink()
    queue = await open_queue(small_disk / "q.db", sink)
    queue.pending_max_bytes = 256 * 1024
    router = LogRouter(queue)
    router.install()
    router.route("session-1", "t")
    level = LOG.level
    LOG.setLevel(logging.INFO)
    ballast = fill(small_disk, 64 * 1024)
    done = threading.Event()

    def action_output() -> None:
        for i in range(1, 50_001):
            LOG.info("line %d", i, extra={"session_id": "session-1"})
        done.set()

    reader = threading.Thread(target=action_output, daemon=True)
    reader.start()
    try:
        def waiting_for_room() -> bool:
            frame = sys._current_frames().get(reader.ident or 0)
            while frame is not None:
                if frame.f_code.co_name == "_wait_for_room":
                    return True
                frame = frame.f_back
            return False

        for _ in range(1200):
            if queue.problem and waiting_for_room():
                break
            await asyncio.sleep(0.05)
        assert queue.problem and "is full" in queue.problem
        assert waiting_for_room() and not done.is_set(), "the reading thread waits, the lines are not dropped"
        ballast.unlink()
        assert await asyncio.to_thread(done.wait, 60)
    finally:
        router.uninstall()
        LOG.setLevel(level)
    await queue.commit_logs()
    drain = asyncio.ensure_future(queue.run_drain())
    await sink.wait(lambda: sink.log_of("t").endswith("line 50000\n"), 60)
    drain.cancel()
    await asyncio.gather(drain, return_exceptions=True)
    await queue.close()
    assert sink.log_of("t") == "".join(f"line {i}\n" for i in range(1, 50_001))
