"""TaskUpdateQueue against real SQLite files, with a scripted sink standing in for the service."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import pytest

from flamenco_deadline_worker.core.model import Delivery, DeliveryResult, Head, Update
from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue
from flamenco_deadline_worker.upstream.store import SCHEMA_VERSION

Rule = Callable[[Update], DeliveryResult | None]


class ScriptedSink:
    """Records what it is given; ``rules`` decide an answer (None: delivered)."""

    def __init__(self) -> None:
        self.delivered: list[Update] = []
        self.attempts: list[Update] = []
        self.rules: list[Rule] = []
        self.changed = asyncio.Event()

    max_log_lines: int | None = None

    def batch_key(self, task_id: str) -> str:
        return task_id  # one call per task: a slow POST holds up only its own task

    async def deliver(self, heads: Sequence[Head]) -> list[DeliveryResult]:
        return [self._deliver_head(head) for head in heads]

    def _deliver_head(self, head: Head) -> DeliveryResult:
        for index, update in enumerate(head.updates):
            self.attempts.append(update)
            self.changed.set()
            for rule in self.rules:
                answer = rule(update)
                if answer is not None:
                    return attrs.evolve(answer, delivered=index)
            self.delivered.append(update)
        return DeliveryResult.ok(len(head.updates))

    def log_of(self, task_id: str) -> str:
        return "".join(u.log for u in self.delivered if u.task_id == task_id)

    async def wait(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


async def open_queue(path: Path, sink: ScriptedSink, **kwargs: object) -> TaskUpdateQueue:
    queue = TaskUpdateQueue(path, sink, push_log_max_interval=0.0, log_commit_interval=0.01, **kwargs)  # type: ignore[arg-type]
    await queue.open()
    return queue


async def test_updates_of_a_task_arrive_in_order_and_merged(tmp_path: Path) -> None:
    sink = ScriptedSink()
    queue = await open_queue(tmp_path / "q.db", sink)
    await queue.put(Update("t1", status="active"))
    for i in range(1000):
        queue.put_log("t1", f"line {i}\n")
    await queue.put(Update("t1", status="completed", steps_completed=1))
    drain = asyncio.ensure_future(queue.run_drain())
    await sink.wait(lambda: any(u.status == "completed" for u in sink.delivered))
    drain.cancel()
    await queue.close()

    assert sink.log_of("t1") == "".join(f"line {i}\n" for i in range(1000))
    statuses = [u.status for u in sink.delivered if u.status]
    assert statuses == ["active", "completed"]
    # 1000 lines were merged into few deliveries, not one each.
    assert len(sink.delivered) <= 3


async def test_failing_task_does_not_block_other_tasks(tmp_path: Path) -> None:
    sink = ScriptedSink()
    failures = {"n": 0}

    def fail_a(update: Update) -> DeliveryResult | None:
        if update.task_id == "a" and failures["n"] < 3:
            failures["n"] += 1
            return DeliveryResult(Delivery.RETRY, reason="HTTP 503", retry_after=0.05)
        return None

    sink.rules.append(fail_a)
    queue = await open_queue(tmp_path / "q.db", sink)
    await queue.put(Update("a", status="active", log="a1\n"))
    await queue.put(Update("b", status="active", log="b1\n"))
    drain = asyncio.ensure_future(queue.run_drain())
    await sink.wait(lambda: sink.log_of("a") == "a1\n" and sink.log_of("b") == "b1\n")
    drain.cancel()
    await queue.close()
    # b got through while a was still failing.
    order = [u.task_id for u in sink.delivered]
    assert order == ["b", "a"]
    assert failures["n"] == 3


async def test_rejected_update_is_dropped_and_the_rest_flows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = ScriptedSink()
    sink.rules.append(
        lambda u: DeliveryResult(Delivery.REJECTED, reason="HTTP 400: bad") if u.log == "poison\n" else None
    )
    queue = await open_queue(tmp_path / "q.db", sink)
    await queue.put(Update("t", log="poison\n", status="active"))
    await queue.put(Update("t", log="fine\n", status="completed"))
    drain = asyncio.ensure_future(queue.run_drain())
    await sink.wait(lambda: sink.log_of("t") == "fine\n")
    assert await queue.flush(30)
    drain.cancel()
    await queue.close()
    assert "refused an update for good (HTTP 400: bad)" in caplog.text


async def test_task_gone_drops_its_updates_and_tells_the_worker(tmp_path: Path) -> None:
    sink = ScriptedSink()
    sink.rules.append(lambda u: DeliveryResult(Delivery.TASK_GONE, reason="HTTP 409") if u.task_id == "x" else None)
    gone: list[tuple[str, str]] = []

    def on_gone(task_id: str, reason: str) -> None:
        gone.append((task_id, reason))
        sink.changed.set()

    queue = await open_queue(tmp_path / "q.db", sink, on_task_gone=on_gone)
    await queue.put(Update("x", status="active"))
    await queue.put(Update("x", status="completed"))
    await queue.put(Update("y", status="active"))
    drain = asyncio.ensure_future(queue.run_drain())
    await sink.wait(lambda: sink.log_of("y") == "" and any(u.task_id == "y" for u in sink.delivered))
    await sink.wait(lambda: bool(gone))
    queue.put_log("x", "late line\n")
    await queue.put(Update("x", status="failed"))
    assert await queue.flush(30)
    drain.cancel()
    await queue.close()
    assert gone == [("x", "HTTP 409")]
    assert [u.task_id for u in sink.attempts].count("x") == 1


async def test_backlog_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    first = await open_queue(db, ScriptedSink())
    await first.put(Update("t", status="active"))
    first.put_log("t", "kept across restarts\n")
    await first.close()  # no drain ran: everything stays on disk

    sink = ScriptedSink()
    second = await open_queue(db, sink)
    assert (await second.backlog()).count == 2
    drain = asyncio.ensure_future(second.run_drain())
    assert await second.flush(30)
    drain.cancel()
    await second.close()
    assert sink.log_of("t") == "kept across restarts\n"
    assert sink.delivered[0].status == "active"


async def test_corrupt_database_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "q.db"
    db.write_bytes(b"this is not an SQLite database" * 100)
    sink = ScriptedSink()
    queue = await open_queue(db, sink)
    await queue.put(Update("t", status="active"))
    assert (await queue.backlog()).count == 1
    await queue.close()
    moved = list(tmp_path.glob("q.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes().startswith(b"this is not")
    assert "is unusable" in caplog.text
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_backlog_bytes_tracks_what_is_undelivered(tmp_path: Path) -> None:
    sink = ScriptedSink()
    queue = await open_queue(tmp_path / "q.db", sink)
    queue.put_log("t", "x" * 1000 + "\n")
    await queue.put(Update("t", status="completed"))
    assert queue.backlog_bytes >= 1001
    drain = asyncio.ensure_future(queue.run_drain())
    assert await queue.flush(30)
    drain.cancel()
    assert queue.backlog_bytes == 0
    await queue.close()
