"""The queue's file under real faults: a lock held by another process, an empty file, a newer schema,
a place it cannot be opened, and giving space back once drained.  Real SQLite files and processes."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_queue import ScriptedSink, open_queue

from flamenco_deadline_worker.core.model import Update
from flamenco_deadline_worker.upstream.store import SCHEMA_VERSION, QueueFileError, UpdateStore

# Holds the queue file with an exclusive lock (as a backup tool or an sqlite3 shell can) until told to let go.
HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("SELECT COUNT(*) FROM updates").fetchone()
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
print("released", flush=True)
"""


def db_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_a_locked_queue_is_waited_for_never_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flamenco_deadline_worker.upstream.store")
    db = tmp_path / "q.db"
    queue = await open_queue(db, ScriptedSink())
    await queue.put(Update("t", status="active"))
    await queue.close()

    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_LOCK, str(db), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert (await asyncio.wait_for(holder.stdout.readline(), 60)).strip() == b"locked"
        store = UpdateStore(db)
        opening = asyncio.ensure_future(store.open())
        for _ in range(1200):  # the message, not a timer, says the store is waiting
            if "is locked by another process" in caplog.text or opening.done():
                break
            await asyncio.sleep(0.05)
        assert not opening.done(), f"opened (or failed) while locked: {caplog.text}"
        assert "waiting for it" in caplog.text
        holder.stdin.write(b"go\n")
        await holder.stdin.drain()
        await asyncio.wait_for(opening, 60)
        assert (await store.backlog()).count == 1, "the backlog was kept"
        await store.close()
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
    assert not list(tmp_path.glob("*corrupt*")), db_files(tmp_path)
    assert "lock is gone" in caplog.text


async def test_an_empty_file_is_a_new_queue_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "q.db"
    db.touch()
    sink = ScriptedSink()
    queue = await open_queue(db, sink)
    await queue.put(Update("t", status="active"))
    assert (await queue.backlog()).count == 1
    await queue.close()
    assert "empty (0-byte) file" in caplog.text and str(db) in caplog.text
    assert not list(tmp_path.glob("*corrupt*"))


async def test_a_newer_schema_stops_with_a_message_and_keeps_the_file(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE updates (id INTEGER PRIMARY KEY, future TEXT)")
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(QueueFileError, match="schema version 99 is newer") as caught:
        await UpdateStore(db).open()
    assert str(db) in str(caught.value) and "task_update_queue_db" in str(caught.value)
    assert db_files(tmp_path) == ["q.db"]


async def test_a_path_that_cannot_be_opened_names_it(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    db.mkdir()
    with pytest.raises(QueueFileError, match="cannot open") as caught:
        await UpdateStore(db).open()
    assert str(db) in str(caught.value)
    assert db.is_dir() and not list(tmp_path.glob("*corrupt*"))


def test_a_queue_that_cannot_be_opened_leaves_no_thread_behind_its_event_loop(tmp_path: Path) -> None:
    """The worker exits on this error at once: nothing may still be running to report into a loop
    that has closed ("Event loop is closed" printed from a thread at exit)."""
    db = tmp_path / "q.db"
    db.mkdir()
    raised: list[str] = []
    before = set(threading.enumerate())
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: raised.append(f"{args.thread}: {args.exc_value!r}")
    try:
        loop = asyncio.new_event_loop()
        with pytest.raises(QueueFileError, match="cannot open"):
            loop.run_until_complete(UpdateStore(db).open())
        loop.close()  # at once, as the exiting worker's does
        for thread in set(threading.enumerate()) - before:
            thread.join(10)
    finally:
        threading.excepthook = previous_hook
    assert raised == []


def size_on_disk(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


async def test_a_drained_queue_gives_its_space_back(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    sink = ScriptedSink()
    queue = await open_queue(db, sink)
    line = "x" * 1000 + "\n"
    for task in range(4):
        for _ in range(5000):
            queue.put_log(f"t{task}", line)
        await queue.commit_logs()
    full = size_on_disk(db)
    assert full > 20 * 2**20, full
    drain = asyncio.ensure_future(queue.run_drain())
    try:
        assert await queue.flush(120)
        # The space goes back right after the last delivered rows are deleted, in the drain's own task.
        for _ in range(600):
            if size_on_disk(db) < 2 * 2**20:
                break
            await asyncio.sleep(0.05)
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
    assert sum(len(u.log) for u in sink.delivered) == 4 * 5000 * len(line)
    drained = size_on_disk(db)
    await queue.close()
    assert drained < 2 * 2**20, f"{full} bytes before, still {drained} after the drain"


async def test_an_existing_version_1_file_is_migrated_with_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with sqlite3.connect(db) as conn:  # as the first release wrote it: no auto_vacuum
        conn.execute("CREATE TABLE updates (id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, "
                     "created REAL NOT NULL, nbytes INTEGER NOT NULL, payload TEXT NOT NULL)")
        conn.execute("CREATE INDEX updates_by_task ON updates (task_id, id)")
        conn.executemany("INSERT INTO updates (task_id, created, nbytes, payload) VALUES (?, ?, ?, ?)",
                         [("t", 1.0, 5, '{"log": "old\\n"}')] * 100)
        conn.execute("PRAGMA user_version = 1")
    store = UpdateStore(db)
    await store.open()
    assert (await store.backlog()).count == 100
    await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental


async def test_rows_beyond_one_statement_are_inserted_in_one_transaction_in_order(tmp_path: Path) -> None:
    store = UpdateStore(tmp_path / "q.db")
    await store.open()
    for count in (1, 200, 201, 450):  # one statement each, then BEGIN / many / COMMIT
        rows = [(f"t{count}", 0.0, 1, f'{{"log": "{i}\\n"}}') for i in range(count)]
        await store.insert(rows)
        stored = await store.rows_of(f"t{count}", 1000)
        assert [row.payload for row in stored] == [r[3] for r in rows]
    await store.close()
