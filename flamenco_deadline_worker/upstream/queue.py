"""TaskUpdateQueue: every status change and log line is committed to SQLite, then drained to the service.

The runner calls ``put`` (committed before it returns) and ``put_log`` (buffered, committed within
``log_commit_interval``).  ``run_drain`` hands the backend the head of every ordering domain that is
ready, all at once (in one call, or one call each: the backend says which), each in pieces within
``push_log_max_bytes``, and decides what each answer means.  A domain whose delivery fails waits on
its own backoff; the others keep flowing, and a slow call holds up only its own domains.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from flamenco_deadline_worker.core.backoff import Backoff, Outage
from flamenco_deadline_worker.core.clock import Clock, SystemClock
from flamenco_deadline_worker.core.model import Delivery, DeliveryResult, Update, UpdateSink
from flamenco_deadline_worker.upstream import batching
from flamenco_deadline_worker.upstream.batching import Built, Piece
from flamenco_deadline_worker.upstream.store import SQLITE_FULL, Backlog, UpdateStore, is_busy, result_code

log = logging.getLogger(__name__)

TaskGoneCallback = Callable[[str, str], None]

MIN_BACKOFF = 0.25
MAX_BACKOFF = 30.0
IDLE_WAIT = 3600.0
ROWS_PER_HEAD = 64  # rows read to build one head: enough for 32 pieces, bounded in memory
HEADS_PER_PASS = 200
MIN_PIECE_BYTES = 4096  # a service that refuses even this much is retried, never given less
MAX_IN_FLIGHT = 8
# Logs buffered in memory beyond this are committed at once rather than waiting for the timer.
PENDING_FLUSH_BYTES = 1024 * 1024
UPDATE_ROW_BYTES = 64  # what a status update counts for in the backlog, besides its log text
# Beyond this, room() makes pipe readers wait: the children block on their full pipes instead of
# the worker buffering without end (a slow or full disk, a commit that keeps failing).
PENDING_MAX_BYTES = 4 * 1024 * 1024
# A failed commit is retried after this, doubling up to COMMIT_RETRY_MAX.
COMMIT_RETRY_MIN = 0.25
COMMIT_RETRY_MAX = 5.0

# The same queue problem is logged as an error at most this often.
PROBLEM_REPEAT_SECONDS = 60.0

ProblemCallback = Callable[[str | None], None]


def _line_groups(text: str, limit: int) -> list[str]:
    """``text`` cut at line ends into pieces of at most ``limit`` characters (a longer line alone)."""
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = start + limit
        if end >= len(text):
            pieces.append(text[start:])
            break
        cut = text.rfind("\n", start, end)
        if cut < 0:  # one line longer than the limit: keep it whole, up to its end
            cut = text.find("\n", end)
            if cut < 0:
                pieces.append(text[start:])
                break
        pieces.append(text[start:cut + 1])
        start = cut + 1
    return pieces


class TaskUpdateQueue:
    def __init__(
        self,
        db_path: Path,
        sink: UpdateSink,
        *,
        push_log_max_bytes: int = 256 * 1024,
        push_log_max_interval: float = 1.0,
        log_commit_interval: float = 0.1,
        on_task_gone: TaskGoneCallback | None = None,
        clock: Clock | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.store = UpdateStore(db_path)
        self.sink = sink
        self.sink_max_lines: int | None = getattr(sink, "max_log_lines", None)
        self.clock: Clock = clock or SystemClock()
        self.max_in_flight = max_in_flight
        self.push_log_max_bytes = push_log_max_bytes
        self.push_log_max_interval = push_log_max_interval
        self.log_commit_interval = log_commit_interval
        self.on_task_gone = on_task_gone

        # Log text, and updates put with put_soon, in order, not yet committed.
        self._pending: list[tuple[str, str | Update]] = []
        self._pending_bytes = 0
        self.pending_max_bytes = PENDING_MAX_BYTES
        self._room = asyncio.Event()
        self._room.set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._commit_due_now = False
        self._flush_task: asyncio.Task[None] | None = None
        # Why commits fail right now (None: they work); on_problem hears every change (status).
        self.problem: str | None = None
        self.on_problem: ProblemCallback | None = None
        self._problem_since = 0.0
        self._last_said: tuple[str | None, float] = (None, -PROBLEM_REPEAT_SECONDS)
        self._retry_delay = 0.0
        self._write_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        # The drain's own wake-up: set on every insert, cleared only by the drain, before it looks.
        self._new_rows = asyncio.Event()
        self._gone: set[str] = set()
        self._retry_at: dict[str, float] = {}  # domain -> when it may be tried again
        self._backoffs: dict[str, Backoff] = {}
        self._limits: dict[str, int] = {}  # domain -> piece size after a "too large" answer
        self._in_flight: set[str] = set()
        self._keys_in_flight: set[str] = set()  # one call per batch key at a time
        self._running: set[asyncio.Future[None]] = set()
        self._ghosts: set[int] = set()  # delivered rows the store failed to delete
        # Domains holding only log text that waits to grow: domain -> (when it is due, its bytes).
        # The drain passes them by without reading their rows again until then, or until more
        # than log text, or enough text, is inserted for them (_insert keeps this up to date).
        self._parked: dict[str, tuple[float, int]] = {}
        self.delivery_calls = 0
        self._outage_since: float | None = None
        self._stored_bytes = 0
        self._rows_per_task: Counter[str] = Counter()
        self._removed = asyncio.Condition()
        self.delivered_updates = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()
        backlog = await self.store.backlog()
        self._stored_bytes = backlog.nbytes
        self._rows_per_task = Counter(await self.store.row_counts())
        if backlog.count:
            log.info(
                "update queue holds %d updates (%d bytes) from an earlier run; delivering them first",
                backlog.count, backlog.nbytes,
            )

    async def close(self) -> None:
        if not await self.commit_logs():
            log.error(
                "%d bytes of task log text could not be committed to %s (%s) and are lost with this exit",
                self._pending_bytes, self.store.path, self.problem,
            )
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        await self.store.close()

    # ---- producer side ---------------------------------------------------------------------

    def put_log(self, task_id: str, text: str) -> None:
        """Queue log text (one or more lines, each ending in a newline) without waiting.

        Never drops text; a reader feeding this should await ``room()`` between reads, which is
        what keeps the buffer bounded.
        """
        if task_id in self._gone or not text:
            return
        self._pending.append((task_id, text))
        self._pending_bytes += len(text)
        if self._pending_bytes >= self.pending_max_bytes:
            self._room.clear()
        if self._flush_task is not None or self.problem is not None:
            return  # a commit is running (it looks again when done), or the retry timer owns the next one
        if self._pending_bytes >= PENDING_FLUSH_BYTES:
            if not self._commit_due_now:
                self._schedule_commit(0.0)
        elif self._flush_handle is None:
            self._schedule_commit(self.log_commit_interval)

    def put_soon(self, update: Update) -> None:
        """Queue ``update`` without waiting for its commit: it is committed with the buffered log
        text, in order, within ``log_commit_interval`` (or with an earlier ``put``).  For what a
        crash may lose without harm, such as an action's start or progress, which a restart reports
        anew; a completion uses ``put``."""
        if update.task_id in self._gone:
            return
        self._pending.append((update.task_id, update))
        self._pending_bytes += UPDATE_ROW_BYTES
        if self._flush_task is None and self._flush_handle is None and self.problem is None:
            self._schedule_commit(self.log_commit_interval)

    @property
    def log_buffer_full(self) -> bool:
        """True while readers should wait for ``room()`` (cheap; readable from another thread)."""
        return self._pending_bytes >= self.pending_max_bytes

    async def room(self) -> None:
        """Return once the log buffer has room: at once, unless commits fall behind or fail.

        A pipe reader awaits this between reads, so a child printing faster than the disk takes
        it, or a full disk, pauses the child on its pipe rather than growing the worker's memory.
        """
        while self._pending_bytes >= self.pending_max_bytes:
            self._room.clear()
            await self._room.wait()

    async def put(self, update: Update) -> None:
        """Commit ``update`` (after any buffered log text) before returning; while the queue file
        cannot be written (a full disk, a lock), retry until it can: nothing is dropped."""
        while True:
            if update.task_id in self._gone:
                log.debug("dropping update for task %s: it is no longer ours", update.task_id)
                return
            async with self._write_lock:
                try:
                    await self._commit_pending(update)
                    return
                except (sqlite3.Error, OSError) as exc:
                    self._commit_failed(exc)
            await asyncio.sleep(self._retry_delay)

    async def commit_logs(self) -> bool:
        """Commit the buffered log text now.  False when the queue file cannot be written: the text
        stays buffered, the problem is logged and shown in ``status``, and a retry is scheduled."""
        async with self._write_lock:
            try:
                await self._commit_pending(None)
                return True
            except (sqlite3.Error, OSError) as exc:
                self._commit_failed(exc)
        if self._flush_handle is None and self._flush_task is None:
            self._schedule_commit(self._retry_delay)
        return False

    def forget_task(self, task_id: str, reason: str) -> None:
        """Updates for this task will no longer be accepted (it was taken away)."""
        self._gone.add(task_id)

    def _schedule_commit(self, delay: float) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        loop = asyncio.get_running_loop()
        self._flush_handle = loop.call_later(delay, self._start_commit_task)
        self._commit_due_now = delay == 0.0

    def _start_commit_task(self) -> None:
        self._flush_handle = None
        self._commit_due_now = False
        if self._flush_task is None:
            self._flush_task = asyncio.ensure_future(self._commit_task())

    async def _commit_task(self) -> None:
        ok = False
        try:
            ok = await self.commit_logs()
        finally:
            self._flush_task = None
        if not ok:
            self._schedule_commit(self._retry_delay)
        elif self._pending:
            self._schedule_commit(0.0 if self._pending_bytes >= PENDING_FLUSH_BYTES else self.log_commit_interval)

    async def _commit_pending(self, last: Update | None) -> None:
        """Commit the buffered text (and ``last``) in one transaction; the text leaves memory only
        once committed, so a failed commit loses nothing.  Raises what the store raises."""
        count = len(self._pending)
        rows, nbytes, urgent = self._take_pending_rows(count)
        if last is not None:
            rows.append(self._row(last))
            if not last.log_only:
                urgent.add(last.task_id)
        if rows:
            await self._insert(rows, urgent)
        del self._pending[:count]
        self._pending_bytes -= nbytes
        if self._pending_bytes < self.pending_max_bytes:
            self._room.set()
        if rows:
            self._commit_worked()

    def _commit_failed(self, exc: BaseException) -> None:
        self._retry_delay = min(COMMIT_RETRY_MAX, max(COMMIT_RETRY_MIN, self._retry_delay * 2))
        if isinstance(exc, sqlite3.Error) and result_code(exc) == SQLITE_FULL or (
            isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        ):
            cause = f"the disk holding {self.store.path.parent} is full ({exc}); free space there"
        elif is_busy(exc):
            cause = f"another process holds a lock on it ({exc})"
        else:
            cause = f"{type(exc).__name__}: {exc}"
        problem = f"cannot write the update queue {self.store.path}: {cause}"
        if problem == self.problem:
            log.debug("commit failed again: %s", exc)
            return
        now = self.clock.monotonic()
        if self.problem is None:
            self._problem_since = now
        self.problem = problem
        # A nearly full disk takes some commits and refuses others: one error a minute, not one per flap.
        said_lately = problem == self._last_said[0] and now - self._last_said[1] < PROBLEM_REPEAT_SECONDS
        log.log(
            logging.DEBUG if said_lately else logging.ERROR,
            "%s. Nothing is lost: task output waits in memory (at most %d MiB, then the task's process is paused "
            "on its output) and commits are retried until they work.",
            problem, self.pending_max_bytes // 2**20,
        )
        if not said_lately:
            self._last_said = (problem, now)
        if self.on_problem is not None:
            self.on_problem(problem)

    def _commit_worked(self) -> None:
        self._retry_delay = 0.0
        if self.problem is None:
            return
        log.log(
            logging.DEBUG if self.clock.monotonic() - self._last_said[1] < PROBLEM_REPEAT_SECONDS
            and self._last_said[1] < self._problem_since else logging.WARNING,
            "the update queue %s is writable again after %.0f s; task output flows again",
            self.store.path, self.clock.monotonic() - self._problem_since,
        )
        self.problem = None
        if self.on_problem is not None:
            self.on_problem(None)

    def _take_pending_rows(self, count: int) -> tuple[list[tuple[str, float, int, str]], int, set[str]]:
        """The first ``count`` buffered texts as rows, their size, and the domains given more than
        log text among them (see _insert); the buffer itself is left as
        it is (see _commit_pending).  Consecutive text of one task is joined into rows of at most
        push_log_max_bytes, cut at line ends, so each row fits in one task update; only a single
        line longer than that makes a longer row."""
        rows: list[tuple[str, float, int, str]] = []
        urgent: set[str] = set()
        if not count:
            return rows, 0, urgent
        now = self.clock.time()
        limit = self.push_log_max_bytes
        nbytes = 0
        current_task = self._pending[0][0]
        parts: list[str] = []
        size = 0
        for task_id, text in self._pending[:count]:
            if isinstance(text, Update):
                nbytes += UPDATE_ROW_BYTES
                if parts:
                    rows.append(self._log_row(current_task, "".join(parts), now))
                    parts, size = [], 0
                rows.append(self._row(text))
                if not text.log_only:
                    urgent.add(task_id)
                current_task = task_id
                continue
            nbytes += len(text)
            if parts and (task_id != current_task or size + len(text) > limit):
                rows.append(self._log_row(current_task, "".join(parts), now))
                parts, size = [], 0
            current_task = task_id
            if len(text) > limit:
                # Many lines at once (e.g. one put_log of a whole file): rows of whole lines.
                rows.extend(self._log_row(task_id, piece, now) for piece in _line_groups(text, limit))
                continue
            parts.append(text)
            size += len(text)
        if parts:
            rows.append(self._log_row(current_task, "".join(parts), now))
        return rows, nbytes, urgent

    def _log_row(self, task_id: str, text: str, now: float) -> tuple[str, float, int, str]:
        payload = json.dumps({"log": text}, ensure_ascii=False)
        return (task_id, now, len(text), payload)

    def _row(self, update: Update) -> tuple[str, float, int, str]:
        payload = json.dumps(update.to_json(), ensure_ascii=False)
        return (update.task_id, self.clock.time(), len(update.log) + UPDATE_ROW_BYTES, payload)

    async def _insert(self, rows: list[tuple[str, float, int, str]], urgent: set[str]) -> None:
        """Insert ``rows``; ``urgent`` names the domains among them given more than log text."""
        rows = [r for r in rows if r[0] not in self._gone]
        if not rows:
            return
        await self.store.insert(rows)
        self._stored_bytes += sum(r[2] for r in rows)
        self._rows_per_task.update(r[0] for r in rows)
        for task_id, _, nbytes, _ in rows:
            parked = self._parked.get(task_id)
            if parked is not None:
                if task_id in urgent:
                    del self._parked[task_id]
                else:
                    self._parked[task_id] = (parked[0], parked[1] + nbytes)
        self._changed.set()
        self._new_rows.set()

    # ---- inspection ------------------------------------------------------------------------

    @property
    def backlog_bytes(self) -> int:
        """Bytes waiting for delivery, committed or still buffered (cheap: kept in memory)."""
        return self._stored_bytes + self._pending_bytes

    async def backlog(self) -> Backlog:
        return await self.store.backlog()

    async def completed_actions(
        self, holds_statuses: Callable[[str], bool] = lambda task_id: True
    ) -> dict[str, set[str]]:
        """Per domain, the actions whose completion is still queued (after a restart: already ended).
        Only the domains ``holds_statuses`` names are read (not, say, a large backlog of log text)."""
        found: dict[str, set[str]] = {}
        for task_id, _ in await self.store.heads(limit=100_000):
            if not holds_statuses(task_id):
                continue
            for row in await self.store.rows_of(task_id, limit=1_000_000):
                try:
                    data = json.loads(row.payload)
                except ValueError:
                    continue
                if data.get("action") and data.get("status") is not None:
                    found.setdefault(task_id, set()).add(str(data["action"]))
        return found

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is delivered (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        await self.commit_logs()
        while True:
            if (await self.store.backlog()).count == 0 and not self._pending:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass

    # ---- drain -----------------------------------------------------------------------------

    async def run_drain(self) -> None:
        """Deliver queued updates until cancelled.  Nothing in here ends the loop but a cancel: a
        failing store is logged once per outage and retried with backoff."""
        outage = Outage("reading the update queue", self.clock.monotonic, Backoff(0.5, 10.0))
        try:
            await self._drain_loop(outage)
        finally:
            # Deliveries in flight die with the drain: the store is about to close under them.
            for call in list(self._running):
                call.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _drain_loop(self, outage: Outage) -> None:
        while True:
            # Cleared before looking at the store: rows inserted while we read must wake the wait.
            self._new_rows.clear()
            try:
                wait = await self._start_deliveries()
                outage.succeeded()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                wait = outage.failed(exc)
            await self.clock.wait(self._new_rows, wait)

    async def drain_once(self) -> float | None:
        """Start deliveries for every ready domain and wait for them; None when any ran, else how
        long until something may be ready (for tests and ``flush``)."""
        before = self.delivery_calls
        wait = await self._start_deliveries()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        return None if self.delivery_calls != before else max(wait, 0.01)

    async def _start_deliveries(self) -> float:
        now_mono = self.clock.monotonic()
        now = self.clock.time()
        wait = IDLE_WAIT
        ready: list[Built] = []
        room = self.max_in_flight - len(self._in_flight)
        counted = dict(self._rows_per_task)
        heads = await self.store.heads(limit=HEADS_PER_PASS)
        if len(heads) < HEADS_PER_PASS:
            # Only counts nothing changed while the store was read: a delivery ending meanwhile (or
            # a commit) is no vanishing, as a busy domain such as the agent log shows.
            unchanged = {t for t, n in counted.items() if self._rows_per_task.get(t) == n}
            self._forget_vanished(unchanged - {t for t, _ in heads})
        for task_id, _ in heads:
            if len(ready) >= room:
                break
            if task_id in self._in_flight or self.sink.batch_key(task_id) in self._keys_in_flight:
                continue
            retry_at = self._retry_at.get(task_id, 0.0)
            if retry_at > now_mono:
                wait = min(wait, retry_at - now_mono)
                continue
            parked = self._parked.pop(task_id, None)
            if parked is not None and now < parked[0] and parked[1] < self._limit(task_id):
                self._parked[task_id] = parked
                wait = min(wait, parked[0] - now)
                continue
            rows = [r for r in await self.store.rows_of(task_id, limit=ROWS_PER_HEAD) if r.id not in self._ghosts]
            built = batching.build(
                task_id, rows, max_bytes=self._limit(task_id), max_lines=self.sink_max_lines
            )
            if built.unreadable:
                await self._consume(built, 0, extra_ids=built.unreadable)
            if not built.pieces:
                continue
            due = built.oldest + self.push_log_max_interval
            if not (built.urgent or built.nbytes >= self._limit(task_id) or now >= due):
                self._parked[task_id] = (due, built.nbytes)
                wait = min(wait, due - now)
                continue
            ready.append(built)
        if ready:
            groups: dict[str, list[Built]] = {}
            for built in ready:
                groups.setdefault(self.sink.batch_key(built.task_id), []).append(built)
            for group in groups.values():
                self._in_flight.update(b.task_id for b in group)
                self._keys_in_flight.add(self.sink.batch_key(group[0].task_id))
                self.delivery_calls += 1
                call = asyncio.ensure_future(self._deliver(group))
                self._running.add(call)
                call.add_done_callback(self._running.discard)
        return max(wait, 0.0)

    def _forget_vanished(self, task_ids: set[str]) -> None:
        """Rows counted before the store was read but no longer in it (removed by someone else, e.g.
        an admin's sqlite3): stop waiting for their delivery, or the worker would wait for ever."""
        buffered = {t for t, _ in self._pending}
        for task_id in task_ids - buffered - self._in_flight:
            log.warning("the updates queued for %s are no longer in %s; not waiting for them", task_id, self.store.path)
            self._forget_rows(task_id)

    def _limit(self, task_id: str) -> int:
        return self._limits.get(task_id, self.push_log_max_bytes)

    async def _deliver(self, group: list[Built]) -> None:
        released = False
        try:
            try:
                results = await self.sink.deliver([b.head for b in group])
                if len(results) != len(group):
                    raise RuntimeError(f"{len(results)} results for {len(group)} heads")
            except Exception as exc:  # a sink must not raise, but a bug there must not stop the drain
                log.exception("delivering updates raised; will retry")
                results = [DeliveryResult(Delivery.RETRY, reason=f"internal error: {exc}")] * len(group)
            if all(r.outcome is Delivery.DELIVERED for r in results) and not any(
                p.cut for b in group for p in b.pieces
            ):
                # Wholly delivered: the next call goes now, without waiting for these rows' deletion
                # (a commit to disk); until it is done the drain passes them over as delivered.
                # (A Deadline worker's next UpdateWorkerSchedule waited on it every round.)
                self._ghosts.update(i for b in group for p in b.pieces for i in p.row_ids)
                self._release(group)
                released = True
            for built, result in zip(group, results, strict=True):
                try:
                    await self._settle(built, result)
                except Exception:
                    log.exception("could not record what became of the updates of %s; will retry", built.task_id)
        finally:
            if not released:
                self._release(group)

    def _release(self, group: list[Built]) -> None:
        """The group's domains and batch key may be delivered again; the drain looks at once."""
        for built in group:
            self._in_flight.discard(built.task_id)
        self._keys_in_flight.discard(self.sink.batch_key(group[0].task_id))
        self._new_rows.set()

    async def _settle(self, built: Built, result: DeliveryResult) -> None:
        task_id = built.task_id
        total = len(built.pieces)
        done = total if result.outcome is Delivery.DELIVERED else max(0, min(result.delivered, total))
        if done:
            await self._consume(built, done)
            self.delivered_updates += done
        if result.outcome is Delivery.DELIVERED:
            self._backoffs.pop(task_id, None)
            self._retry_at.pop(task_id, None)
            if self._outage_since is not None:
                log.info(
                    "updates are being delivered again after %.0f s of failures",
                    self.clock.monotonic() - self._outage_since,
                )
                self._outage_since = None
        elif result.outcome is Delivery.TOO_LARGE:
            self._smaller(task_id, built.pieces[done] if done < total else None, result)
        elif result.outcome is Delivery.RETRY:
            self._retry_later(task_id, result)
        elif result.outcome is Delivery.REJECTED:
            if done < total:
                refused = built.pieces[done]
                log.error(
                    "%s: the service refused an update for good (%s); dropped it (%d bytes of log%s)",
                    task_id, result.reason, refused.nbytes,
                    f", status {refused.update.status}" if refused.update.status else "",
                )
                await self._consume(built, done + 1, keep_from=done)
        else:
            self._gone.add(task_id)
            dropped = await self.store.delete_task(task_id)
            self._stored_bytes = (await self.store.backlog()).nbytes
            self._forget_rows(task_id)
            log.warning(
                "%s is no longer ours (%s); dropped its %d queued update(s)", task_id, result.reason, dropped
            )
            if self.on_task_gone is not None:
                self.on_task_gone(task_id, result.reason)

    def _smaller(self, task_id: str, piece: Piece | None, result: DeliveryResult) -> None:
        """A 413: send smaller pieces.  At the floor, keep retrying with backoff: text is never dropped."""
        current = self._limit(task_id)
        if piece is not None and piece.nbytes:
            current = min(current, piece.nbytes)
        smaller = max(MIN_PIECE_BYTES, current // 2)
        if smaller < self._limit(task_id):
            log.warning(
                "%s: the service refused %d bytes as too large (%s); sending at most %d bytes per update",
                task_id, current, result.reason, smaller,
            )
            self._limits[task_id] = smaller
            self._retry_at.pop(task_id, None)
        else:
            self._retry_later(task_id, result)

    async def _consume(
        self, built: Built, count: int, *, keep_from: int | None = None, extra_ids: tuple[int, ...] = ()
    ) -> None:
        """Remove the rows of the first ``count`` pieces (a cut row keeps its undelivered rest)."""
        pieces = built.pieces[:count]
        ids = [i for p in pieces for i in p.row_ids] + list(extra_ids)
        cut = pieces[-1].cut if pieces else None
        if keep_from is not None and cut is None and count > keep_from:
            cut = built.pieces[keep_from].cut
        if cut is not None and cut.row_id in ids:
            cut = None
        try:
            await self.store.consume(ids, None if cut is None else (cut.row_id, cut.payload, cut.nbytes))
        except Exception:
            # Delivered but not deleted: never send these again, even if the store misbehaves.
            self._ghosts.update(ids)
            raise
        self._ghosts.difference_update(ids)
        freed = sum(built.row_bytes.get(i, 0) for i in ids)
        if cut is not None:
            freed += built.row_bytes.get(cut.row_id, 0) - cut.nbytes
        self._stored_bytes = max(0, self._stored_bytes - freed)
        self._forget_rows(built.task_id, len(ids))
        self._changed.set()

    def _forget_rows(self, task_id: str, count: int | None = None) -> None:
        self._parked.pop(task_id, None)
        left = 0 if count is None else self._rows_per_task[task_id] - count
        if left > 0:
            self._rows_per_task[task_id] = left
        else:
            self._rows_per_task.pop(task_id, None)
            self._limits.pop(task_id, None)
            self._backoffs.pop(task_id, None)
            self._retry_at.pop(task_id, None)
        asyncio.ensure_future(self._notify_removed())

    async def _notify_removed(self) -> None:
        async with self._removed:
            self._removed.notify_all()

    def has_undelivered(self, task_id: str) -> bool:
        return task_id in self._rows_per_task or any(t == task_id for t, _ in self._pending)

    async def wait_delivered(self, task_id: str, timeout: float) -> bool:
        """Wait until every update of ``task_id`` queued so far is delivered (or dropped)."""
        await self.commit_logs()
        try:
            async with self._removed:
                await asyncio.wait_for(
                    self._removed.wait_for(lambda: task_id not in self._rows_per_task), timeout
                )
            return True
        except asyncio.TimeoutError:
            return False

    def _retry_later(self, task_id: str, result: DeliveryResult) -> None:
        backoff = self._backoffs.setdefault(task_id, Backoff(MIN_BACKOFF, MAX_BACKOFF))
        wait = backoff.next(result.retry_after)
        self._retry_at[task_id] = self.clock.monotonic() + wait
        if self._outage_since is None:
            self._outage_since = self.clock.monotonic()
            log.warning("could not deliver updates (%s); will keep retrying, queued safely on disk", result.reason)
        else:
            log.debug("%s: delivery failed again (%s); retry in %.2f s", task_id, result.reason, wait)
