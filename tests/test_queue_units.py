"""The queue's delivery rules, driven by a fake clock and a scripted backend (real SQLite files):
pieces within the size limit, 413 answers, partial deliveries, batch keys, a slow call, and a
drain that outlives a failing store.  No sleeps: the clock moves when the test says so."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from flamenco_deadline_worker.core.clock import FakeClock
from flamenco_deadline_worker.core.model import Delivery, DeliveryResult, Head, Update
from flamenco_deadline_worker.upstream import batching
from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue
from flamenco_deadline_worker.upstream.store import Row

Answer = Callable[[Head, int, Update], DeliveryResult | None]


class FakeBackend:
    """Answers each update by ``answer`` (None: delivered); records calls and deliveries."""

    def __init__(self, answer: Answer | None = None, together: bool = False) -> None:
        self.answer = answer
        self.together = together
        self.calls: list[list[str]] = []
        self.delivered: list[Update] = []
        self.changed = asyncio.Event()
        self.gate: dict[str, asyncio.Event] = {}  # task id -> released when set

    max_log_lines: int | None = None

    def batch_key(self, task_id: str) -> str:
        return "all" if self.together else task_id

    async def deliver(self, heads: Sequence[Head]) -> list[DeliveryResult]:
        self.calls.append([h.task_id for h in heads])
        results = []
        for head in heads:
            gate = self.gate.get(head.task_id)
            if gate is not None:
                await gate.wait()
            results.append(self._one(head))
        self.changed.set()
        return results

    def _one(self, head: Head) -> DeliveryResult:
        for index, update in enumerate(head.updates):
            answer = self.answer(head, index, update) if self.answer else None
            if answer is not None:
                return DeliveryResult(answer.outcome, answer.reason, answer.retry_after, delivered=index)
            self.delivered.append(update)
        return DeliveryResult.ok(len(head.updates))

    def log_of(self, task_id: str) -> str:
        return "".join(u.log for u in self.delivered if u.task_id == task_id)

    async def until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


async def parked(clock: FakeClock, timeout: float = 30.0) -> None:
    """Until the drain waits on the clock (its store calls run in a thread, so this takes real time)."""
    async def loop() -> None:
        while not clock.sleepers:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(loop(), timeout)


async def started(tmp_path: Path, backend: FakeBackend, clock: FakeClock, **kwargs: object) -> TaskUpdateQueue:
    queue = TaskUpdateQueue(
        tmp_path / "q.db", backend, clock=clock, log_commit_interval=0.0, **kwargs  # type: ignore[arg-type]
    )
    await queue.open()
    return queue


def lines(count: int, width: int = 50, tag: str = "x") -> str:
    return "".join(f"{tag} {i:06d} ".ljust(width - 1, ".") + "\n" for i in range(count))


def test_a_long_row_is_cut_at_line_ends_within_the_limit() -> None:
    text = lines(100)
    rows = [Row(1, "t", 0.0, len(text), '{"log": ' + repr(text).replace("'", '"') + ', "status": "completed"}')]
    built = batching.build("t", rows, max_bytes=1000)
    assert [p.nbytes <= 1000 for p in built.pieces] == [True] * len(built.pieces)
    assert all(p.update.log.endswith("\n") for p in built.pieces)
    assert "".join(p.update.log for p in built.pieces) == text
    assert [p.update.status for p in built.pieces][-1] == "completed"
    assert all(p.update.status is None for p in built.pieces[:-1])
    assert built.pieces[-1].row_ids == (1,) and all(p.cut is not None for p in built.pieces[:-1])


def test_pieces_never_merge_across_actions_or_statuses() -> None:
    def row(i: int, **fields: object) -> Row:
        import json

        return Row(i, "s", 0.0, 10, json.dumps(fields))

    rows = [
        row(1, action="a1", extra={"startedAt": "t0"}),
        row(2, action="a1", status="SUCCEEDED", extra={"completedStatus": "SUCCEEDED"}),
        row(3, action="a2", extra={"startedAt": "t1"}),
        row(4, action="a2", extra={"progressPercent": 50.0}),
    ]
    built = batching.build("s", rows, max_bytes=1000)
    assert [(p.update.action_id, p.row_ids) for p in built.pieces] == [("a1", (1, 2)), ("a2", (3, 4))]
    assert built.pieces[1].update.extra == {"startedAt": "t1", "progressPercent": 50.0}


async def test_a_huge_message_arrives_whole_in_pieces_within_the_limit(tmp_path: Path) -> None:
    backend, clock = FakeBackend(), FakeClock()
    queue = await started(tmp_path, backend, clock, push_log_max_bytes=4096)
    text = lines(2000)  # 100 KB in one row
    queue.put_log("t", text)
    await queue.put(Update("t", status="completed"))
    drain = asyncio.ensure_future(queue.run_drain())
    await backend.until(lambda: any(u.status == "completed" for u in backend.delivered))
    assert await queue.flush(10)  # and every row of it consumed
    drain.cancel()
    assert backend.log_of("t") == text
    assert max(len(u.log.encode()) for u in backend.delivered) <= 4096
    await queue.close()


async def test_too_large_answers_halve_the_pieces_and_nothing_is_lost(tmp_path: Path) -> None:
    def refuse_big(head: Head, index: int, update: Update) -> DeliveryResult | None:
        if len(update.log.encode()) > 10_000:
            return DeliveryResult(Delivery.TOO_LARGE, "HTTP 413")
        return None

    backend, clock = FakeBackend(refuse_big), FakeClock()
    queue = await started(tmp_path, backend, clock, push_log_max_bytes=64 * 1024)
    text = lines(4000)  # 200 KB
    queue.put_log("t", text)
    await queue.put(Update("t", status="completed"))
    drain = asyncio.ensure_future(queue.run_drain())
    await backend.until(lambda: any(u.status == "completed" for u in backend.delivered))
    drain.cancel()
    assert backend.log_of("t") == text  # in order, nothing twice, nothing dropped
    assert queue._limit("t") <= 10_000 or not queue.has_undelivered("t")
    await queue.close()


async def test_a_delivery_that_stops_half_way_resends_only_the_rest(tmp_path: Path) -> None:
    failures = {"left": 3}

    def flaky(head: Head, index: int, update: Update) -> DeliveryResult | None:
        if index == 1 and failures["left"]:
            failures["left"] -= 1
            return DeliveryResult(Delivery.RETRY, "connection reset")
        return None

    backend, clock = FakeBackend(flaky), FakeClock()
    queue = await started(tmp_path, backend, clock, push_log_max_bytes=2048)
    text = lines(400)
    queue.put_log("t", text)
    await queue.put(Update("t", status="completed"))
    drain = asyncio.ensure_future(queue.run_drain())
    while not any(u.status == "completed" for u in backend.delivered):
        await parked(clock)
        clock.advance(60.0)  # past any backoff
    drain.cancel()
    assert failures["left"] == 0
    assert backend.log_of("t") == text
    await queue.close()


async def test_heads_with_one_batch_key_travel_in_one_call(tmp_path: Path) -> None:
    backend, clock = FakeBackend(together=True), FakeClock()
    queue = await started(tmp_path, backend, clock)
    for task in ("s1", "s2", "s3"):
        await queue.put(Update(task, action_id="a", status="SUCCEEDED", extra={"completedStatus": "SUCCEEDED"}))
    drain = asyncio.ensure_future(queue.run_drain())
    await backend.until(lambda: len(backend.delivered) == 3)
    drain.cancel()
    assert backend.calls == [["s1", "s2", "s3"]]
    await queue.close()


async def test_a_slow_call_holds_up_only_its_own_task(tmp_path: Path) -> None:
    backend, clock = FakeBackend(), FakeClock()
    backend.gate["slow"] = asyncio.Event()
    queue = await started(tmp_path, backend, clock)
    await queue.put(Update("slow", status="active"))
    drain = asyncio.ensure_future(queue.run_drain())
    await queue.put(Update("fast", status="active"))
    await queue.put(Update("fast", status="completed"))
    await backend.until(lambda: [u.status for u in backend.delivered if u.task_id == "fast"] == ["active", "completed"])
    assert not any(u.task_id == "slow" for u in backend.delivered)
    backend.gate["slow"].set()
    await backend.until(lambda: any(u.task_id == "slow" for u in backend.delivered))
    drain.cancel()
    await queue.close()


async def test_log_text_waits_to_grow_until_the_interval_passes(tmp_path: Path) -> None:
    backend, clock = FakeBackend(), FakeClock()
    queue = await started(tmp_path, backend, clock, push_log_max_interval=5.0)
    queue.put_log("t", "one line\n")
    await queue.commit_logs()
    drain = asyncio.ensure_future(queue.run_drain())
    await parked(clock)
    clock.advance(4.0)
    await parked(clock)
    assert backend.delivered == []
    clock.advance(1.5)
    await backend.until(lambda: backend.log_of("t") == "one line\n")
    drain.cancel()
    await queue.close()


async def test_the_drain_outlives_a_failing_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend, clock = FakeBackend(), FakeClock()
    queue = await started(tmp_path, backend, clock)
    real_heads = queue.store.heads
    failures = {"left": 3}

    async def heads(limit: int = 200) -> list[tuple[str, int]]:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("disk I/O error (injected)")
        return await real_heads(limit)

    queue.store.heads = heads  # type: ignore[method-assign]
    drain = asyncio.ensure_future(queue.run_drain())
    await queue.put(Update("t", status="completed"))
    while not backend.delivered:
        await parked(clock)
        clock.advance(11.0)
    assert not drain.done()
    drain.cancel()
    assert caplog.text.count("reading the update queue failed") == 1
    await queue.close()


async def test_updates_put_soon_are_committed_in_order_with_the_text_around_them(tmp_path: Path) -> None:
    backend, clock = FakeBackend(), FakeClock()
    queue = await started(tmp_path, backend, clock)
    queue.put_log("s", "before\n")
    queue.put_soon(Update("s", action_id="a1", extra={"startedAt": "t0"}))
    queue.put_log("s", "after\n")
    await queue.put(Update("s", action_id="a1", status="SUCCEEDED", extra={"completedStatus": "SUCCEEDED"}))
    payloads = [row.payload for row in await queue.store.rows_of("s", 10)]
    assert ["before" in payloads[0], "startedAt" in payloads[1], "after" in payloads[2]] == [True] * 3
    assert "SUCCEEDED" in payloads[3] and len(payloads) == 4
    await queue.close()


async def test_an_update_put_soon_alone_is_committed_and_delivered(tmp_path: Path) -> None:
    backend, clock = FakeBackend(), FakeClock()
    queue = await started(tmp_path, backend, clock)
    drain = asyncio.ensure_future(queue.run_drain())
    queue.put_soon(Update("s", action_id="a1", extra={"startedAt": "t0"}))
    await backend.until(lambda: [u.extra for u in backend.delivered] == [{"startedAt": "t0"}])
    drain.cancel()
    await queue.close()


async def test_log_text_waiting_to_grow_is_not_read_again_until_more_than_text_comes(tmp_path: Path) -> None:
    """A Deadline agent commits many times a second.  A domain that holds only log text waiting to
    grow is passed by without its rows being read again (reading and parsing them on every commit
    was a third of the agent's loop); enough text, or a status, sends it at once."""
    backend, clock = FakeBackend(), FakeClock()
    queue = await started(tmp_path, backend, clock, push_log_max_interval=60.0, push_log_max_bytes=1000)
    passes: list[int] = []
    reads: list[str] = []
    real_heads, real_rows_of = queue.store.heads, queue.store.rows_of

    async def heads(limit: int = 200) -> list[tuple[str, int]]:
        passes.append(1)
        return await real_heads(limit)

    async def rows_of(task_id: str, limit: int) -> list[Row]:
        reads.append(task_id)
        return await real_rows_of(task_id, limit)

    queue.store.heads = heads  # type: ignore[method-assign]
    queue.store.rows_of = rows_of  # type: ignore[method-assign]
    drain = asyncio.ensure_future(queue.run_drain())

    async def after_pass(before: int) -> None:
        async def loop() -> None:
            while len(passes) <= before or not clock.sleepers:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(loop(), 30)

    async def commit(text: str) -> None:
        before = len(passes)
        queue.put_log("t", text)
        await queue.commit_logs()
        await after_pass(before)

    await after_pass(0)
    await commit("first\n")
    assert reads == ["t"]
    for n in range(5):
        await commit(f"more {n}\n")
    assert reads == ["t"] and backend.delivered == []
    await commit("x" * 1000 + "\n")  # now past push_log_max_bytes: read and sent
    await backend.until(lambda: backend.log_of("t").startswith("first\nmore 0\n") and "x\n" in backend.log_of("t"))
    assert reads == ["t", "t"]
    await commit("waiting\n")
    assert reads == ["t", "t", "t"] and "waiting" not in backend.log_of("t")
    await queue.put(Update("t", status="done"))  # a status: everything goes at once
    await backend.until(lambda: any(u.status == "done" for u in backend.delivered))
    assert backend.log_of("t").endswith("x\nwaiting\n")
    drain.cancel()
    await queue.close()


async def test_a_cancel_landing_as_the_drain_is_woken_stops_it() -> None:
    """The drain waits with SystemClock.wait.  On Python 3.11 asyncio.wait_for drops a cancel that
    lands in the same turn as the event it waits for, and the drain then slept on for an hour while
    the agent's shutdown waited for it (seen as a hung full-disk test)."""
    from flamenco_deadline_worker.core.clock import SystemClock

    for _ in range(20):
        event = asyncio.Event()
        waiting = asyncio.ensure_future(SystemClock().wait(event, 3600.0))
        await asyncio.sleep(0)  # one turn: the wait has begun
        event.set()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 30)


async def test_the_next_call_does_not_wait_for_the_delivered_rows_to_be_deleted(tmp_path: Path) -> None:
    """A Deadline worker's UpdateWorkerSchedule rounds: once a call delivered its updates, the next
    goes without waiting for their rows' deletion (a commit to disk), and sends none of them again."""
    backend, clock = FakeBackend(together=True), FakeClock()
    queue = await started(tmp_path, backend, clock)
    deleting = asyncio.Event()
    real_consume = queue.store.consume

    async def slow_consume(ids: Sequence[int], rest: tuple[int, str, int] | None) -> None:
        await deleting.wait()
        await real_consume(ids, rest)

    queue.store.consume = slow_consume  # type: ignore[method-assign]
    drain = asyncio.ensure_future(queue.run_drain())
    await queue.put(Update("s", action_id="a1", status="SUCCEEDED"))
    await backend.until(lambda: len(backend.calls) == 1)
    await queue.put(Update("s", action_id="a2", status="SUCCEEDED"))
    await backend.until(lambda: len(backend.calls) == 2)  # while the first rows are still being deleted
    assert [u.action_id for u in backend.delivered] == ["a1", "a2"]
    deleting.set()
    await asyncio.wait_for(queue.flush(30), 60)
    assert [u.action_id for u in backend.delivered] == ["a1", "a2"] and (await queue.backlog()).count == 0
    drain.cancel()
    await queue.close()
