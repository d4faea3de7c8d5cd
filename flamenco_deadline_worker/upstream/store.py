"""The SQLite file behind the update queue: schema, migrations, locks, space, and moving a corrupt file aside.

Only a file SQLite proves damaged (SQLITE_CORRUPT, SQLITE_NOTADB, a failed quick_check) is moved
aside; a locked file is waited for, and a file that cannot be opened where it is stops the worker
with a message naming it, its backlog untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import attrs

from flamenco_deadline_worker.config import ConfigError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

# Index i holds the statements that take a database from version i to i + 1 (in one transaction);
# None marks a step done by code outside a transaction (see _migrate).
MIGRATIONS: tuple[tuple[str, ...] | None, ...] = (
    (
        """CREATE TABLE updates (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL,
            created REAL NOT NULL,
            nbytes INTEGER NOT NULL,
            payload TEXT NOT NULL
        )""",
        "CREATE INDEX updates_by_task ON updates (task_id, id)",
    ),
    None,  # 1 -> 2: auto_vacuum=INCREMENTAL, so a drained queue gives its space back
)

# SQLite's primary result codes (the low byte of an extended code).
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY = 3, 5, 6, 8
SQLITE_CORRUPT, SQLITE_CANTOPEN, SQLITE_FULL, SQLITE_NOTADB = 11, 14, 13, 26

# Each statement waits this long for another connection's lock before SQLITE_BUSY.
BUSY_TIMEOUT_SECONDS = 5.0
# While opening: a shorter wait per try, so the log says soon that the file is locked.
OPEN_BUSY_TIMEOUT_SECONDS = 1.0
LOCKED_REMINDER_SECONDS = 30.0
# Free pages worth giving back once the queue is empty; tries while the connection is busy.
RECLAIM_MIN_BYTES = 1024 * 1024
RECLAIM_TRIES = 50
# The write-ahead log is cut back to this after a checkpoint, instead of keeping its largest size.
WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
INSERT_ROWS = "INSERT INTO updates (task_id, created, nbytes, payload) VALUES "
ROWS_PER_STATEMENT = 200  # 800 bound values, far below SQLite's limit of 32,766


class NewerSchema(Exception):
    pass


class QueueFileError(ConfigError):
    """The queue file cannot be used where it is (read-only, not openable, from a newer worker)."""


def result_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``exc`` (Python >= 3.11), else guessed from the message."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc).lower()
    for needle, guess in (("locked", SQLITE_BUSY), ("malformed", SQLITE_CORRUPT), ("not a database", SQLITE_NOTADB),
                          ("unable to open", SQLITE_CANTOPEN), ("readonly", SQLITE_READONLY),
                          ("disk is full", SQLITE_FULL)):
        if needle in text:
            return guess
    return None


def is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and result_code(exc) in (SQLITE_BUSY, SQLITE_LOCKED)


class ProvenCorrupt(sqlite3.DatabaseError):
    """quick_check found damage: the one case besides SQLITE_CORRUPT/NOTADB where a file is moved aside."""


@attrs.frozen
class Row:
    id: int
    task_id: str
    created: float
    nbytes: int
    payload: str


@attrs.frozen
class Backlog:
    count: int
    nbytes: int
    oldest_created: float | None

    def oldest_age(self, now: float | None = None) -> float:
        if self.oldest_created is None:
            return 0.0
        return max(0.0, (now or time.time()) - self.oldest_created)


async def _rollback(db: aiosqlite.Connection) -> None:
    """SQLite may have rolled back already (e.g. on SQLITE_FULL); a second ROLLBACK would hide the cause."""
    if db.in_transaction:
        try:
            await db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.debug("rollback after a failed transaction: %s", exc)


def _try_open(path: Path) -> None:
    sqlite3.connect(path, timeout=OPEN_BUSY_TIMEOUT_SECONDS).close()


class UpdateStore:
    """Rows of JSON payloads in WAL mode; every write is one committed transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._moved_aside = False
        self._tx = asyncio.Lock()  # one transaction at a time on the shared connection
        self._reclaim: asyncio.Future[None] | None = None
        self._reclaim_wanted = False

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueFileError(f"task_update_queue_db: cannot create {self.path.parent}: {exc.strerror}") from None
        self._say_if_empty_file()
        locked_since: float | None = None
        reminded = 0.0
        while True:
            try:
                self._db = await self._connect()
                break
            except sqlite3.Error as exc:
                code = result_code(exc)
                if is_busy(exc):
                    now = time.monotonic()
                    if locked_since is None or now - reminded >= LOCKED_REMINDER_SECONDS:
                        log.warning(
                            "update queue %s is locked by another process (%s)%s; waiting for it, never moving "
                            "it aside", self.path, exc,
                            "" if locked_since is None else f" for {now - locked_since:.0f} s now",
                        )
                        locked_since = locked_since or now
                        reminded = now
                    await asyncio.sleep(0.2)
                    continue
                if isinstance(exc, ProvenCorrupt) or code in (SQLITE_CORRUPT, SQLITE_NOTADB):
                    self._replace_corrupt(exc)
                    continue
                raise QueueFileError(self._cannot_open(exc)) from None
            except NewerSchema as exc:
                raise QueueFileError(
                    f"task_update_queue_db: {self.path}: {exc}. Upgrade this worker, or move the file away "
                    "yourself (its updates are then never delivered)."
                ) from None
        if locked_since is not None:
            log.info("update queue %s: the lock is gone after %.0f s; opened it", self.path,
                     time.monotonic() - locked_since)

    def _say_if_empty_file(self) -> None:
        try:
            empty = self.path.stat().st_size == 0 and not Path(f"{self.path}-wal").exists()
        except OSError:
            return
        if empty:
            log.warning(
                "update queue %s is an empty (0-byte) file: nothing was ever committed to it (or it was cut "
                "short outside the worker); starting it as a new, empty queue", self.path,
            )

    def _replace_corrupt(self, exc: Exception) -> None:
        if self._moved_aside:
            raise QueueFileError(f"task_update_queue_db: {self.path}: still unusable after moving it aside: {exc}")
        self._moved_aside = True
        moved = self._move_aside()
        log.error(
            "update queue %s is unusable: SQLite finds it damaged (%s); moved it to %s and started an empty queue. "
            "Updates in the old file were NOT delivered; inspect it with sqlite3.", self.path, exc, moved,
        )

    def _cannot_open(self, exc: sqlite3.Error) -> str:
        reason = str(exc)
        try:
            if os.statvfs(self.path.parent).f_flag & os.ST_RDONLY:
                reason = f"{reason} (read-only file system)"
        except OSError:
            pass
        return f"task_update_queue_db: cannot open {self.path}: {reason}"

    async def _connect(self) -> aiosqlite.Connection:
        # A file SQLite cannot open fails here, before aiosqlite starts its thread: when its own
        # connect fails, that thread finishes after an unawaited future and, if the event loop has
        # closed by then (the worker exiting on this very error), prints "Event loop is closed".
        await asyncio.to_thread(_try_open, self.path)
        db = await aiosqlite.connect(self.path, isolation_level=None, timeout=OPEN_BUSY_TIMEOUT_SECONDS)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed update survives power loss too, not only a crash of the worker.
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
            async with db.execute("PRAGMA quick_check") as cur:
                result = await cur.fetchone()
            if not result or result[0] != "ok":
                raise ProvenCorrupt(f"quick_check: {result[0] if result else 'no answer'}")
            await self._migrate(db)
            await db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
        except BaseException:
            await db.close()
            raise
        return db

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise NewerSchema(f"schema version {version} is newer than this worker's {SCHEMA_VERSION}")
        for step in range(version, SCHEMA_VERSION):
            statements = MIGRATIONS[step]
            if statements is None:
                if not await self._to_incremental_vacuum(db):
                    return  # tried again at the next start
            else:
                await db.execute("BEGIN IMMEDIATE")
                for statement in statements:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {step + 1}")
                await db.execute("COMMIT")
            log.info("update queue %s: schema migrated to version %d", self.path, step + 1)

    async def _to_incremental_vacuum(self, db: aiosqlite.Connection) -> bool:
        """Version 2: pages freed by delivered updates can be given back (VACUUM needs no transaction)."""
        try:
            await db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            await db.execute("VACUUM")  # rewrites the file once; needs about its size in free space
        except sqlite3.OperationalError as exc:
            if result_code(exc) != SQLITE_FULL:
                raise
            log.warning("update queue %s: no room to rewrite it for giving space back (%s); trying again at "
                        "the next start", self.path, exc)
            return False
        await db.execute("PRAGMA user_version = 2")
        return True

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(target) + suffix))
        return target

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("update store is not open")
        return self._db

    async def close(self) -> None:
        reclaim, self._reclaim = self._reclaim, None
        if reclaim is not None:
            reclaim.cancel()
            await asyncio.gather(reclaim, return_exceptions=True)
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def insert(self, rows: Sequence[tuple[str, float, int, str]]) -> None:
        """Insert (task_id, created, nbytes, payload) rows in one transaction."""
        db = self.db
        if len(rows) <= ROWS_PER_STATEMENT:
            # One statement is its own transaction: one trip to SQLite's thread instead of three,
            # which is most of what a status update costs the task that waits for it.
            sql = INSERT_ROWS + ", ".join(["(?, ?, ?, ?)"] * len(rows))
            async with self._tx:
                await db.execute(sql, [value for row in rows for value in row])
            return
        async with self._tx:
            await db.execute("BEGIN")
            try:
                await db.executemany(INSERT_ROWS + "(?, ?, ?, ?)", rows)
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise

    async def heads(self, limit: int = 200) -> list[tuple[str, int]]:
        """The oldest row id of each task with updates, oldest first."""
        sql = "SELECT task_id, MIN(id) AS first FROM updates GROUP BY task_id ORDER BY first LIMIT ?"
        # execute_fetchall: one trip to SQLite's thread (execute, fetch and close are three).
        return [(str(r[0]), int(r[1])) for r in await self.db.execute_fetchall(sql, (limit,))]

    async def rows_of(self, task_id: str, limit: int) -> list[Row]:
        sql = "SELECT id, task_id, created, nbytes, payload FROM updates WHERE task_id = ? ORDER BY id LIMIT ?"
        return [Row(*r) for r in await self.db.execute_fetchall(sql, (task_id, limit))]

    async def delete_ids(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        await self.db.execute(f"DELETE FROM updates WHERE id IN ({marks})", tuple(ids))
        self._reclaim_soon()

    async def delete_task(self, task_id: str) -> int:
        async with self.db.execute("DELETE FROM updates WHERE task_id = ?", (task_id,)) as cur:
            count = cur.rowcount
        self._reclaim_soon()
        return count

    def _reclaim_soon(self) -> None:
        """After rows went: give space back in a task of its own, so a delete is done once committed
        (a failure here must never look like the delete failing)."""
        self._reclaim_wanted = True  # a running task looks again: it may have looked just before
        if self._db is not None and (self._reclaim is None or self._reclaim.done()):
            self._reclaim = asyncio.ensure_future(self._reclaim_quietly())

    async def _reclaim_quietly(self) -> None:
        while self._reclaim_wanted:
            self._reclaim_wanted = False
            try:
                await self.reclaim_if_empty()
            except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite's "no active connection"
                log.debug("giving space back failed (%s); trying after the next drain", exc)
                return

    async def reclaim_if_empty(self) -> int:
        for _ in range(RECLAIM_TRIES):
            async with self._tx:  # executescript() would commit another coroutine's open transaction
                given = await self._reclaim_if_empty()
            if given is not None:
                return given
            await asyncio.sleep(0.1)  # another statement of this connection is still being read
        return 0

    async def _reclaim_if_empty(self) -> int | None:
        """Once every update is delivered, give the file's free pages back and cut the write-ahead
        log to nothing; answers the bytes given back, None to be tried again shortly (another
        statement of this connection is being read).  A queue that never empties keeps its pages
        for reuse, which costs nothing."""
        db = self.db
        rows = list(await db.execute_fetchall("SELECT EXISTS (SELECT 1 FROM updates)"))
        if not rows or rows[0][0]:
            return 0
        free = await self._pragma_int("freelist_count") * await self._pragma_int("page_size")
        wal = Path(f"{self.path}-wal")
        wal_size = wal.stat().st_size if wal.exists() else 0
        if free < RECLAIM_MIN_BYTES and wal_size < RECLAIM_MIN_BYTES:
            return 0
        before = self._size_on_disk()
        try:
            if free >= RECLAIM_MIN_BYTES:
                # Each step of this pragma frees one page, and execute() steps a row-less statement
                # only once: executescript() runs it to the end.
                await db.executescript("PRAGMA incremental_vacuum;")
            # In WAL mode the file shrinks only when the checkpoint copies the vacuum into it.
            async with db.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
                busy = await cur.fetchone()
            if busy is not None and busy[0]:
                return None
        except sqlite3.Error as exc:
            if is_busy(exc):
                return None
            log.debug("giving space back failed (%s); trying after the next drain", exc)
            return 0
        given = max(0, before - self._size_on_disk())
        if given:
            log.info("update queue %s is empty: gave %.1f MiB back to the file system", self.path, given / 2**20)
        return given

    async def _pragma_int(self, name: str) -> int:
        rows = list(await self.db.execute_fetchall(f"PRAGMA {name}"))
        return int(rows[0][0]) if rows else 0

    def _size_on_disk(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += Path(f"{self.path}{suffix}").stat().st_size
            except OSError:
                pass
        return total

    async def row_counts(self) -> dict[str, int]:
        rows = await self.db.execute_fetchall("SELECT task_id, COUNT(*) FROM updates GROUP BY task_id")
        return {str(r[0]): int(r[1]) for r in rows}

    async def backlog(self) -> Backlog:
        sql = "SELECT COUNT(*), COALESCE(SUM(nbytes), 0), MIN(created) FROM updates"
        row: Any = list(await self.db.execute_fetchall(sql))[0]
        return Backlog(int(row[0]), int(row[1]), row[2])

    async def consume(self, ids: Sequence[int], rest: tuple[int, str, int] | None) -> None:
        """Delete delivered rows and rewrite a partly delivered one to its rest, in one transaction."""
        if not ids and rest is None:
            return
        db = self.db
        async with self._tx:
            await self._consume(db, ids, rest)
        self._reclaim_soon()

    async def _consume(self, db: aiosqlite.Connection, ids: Sequence[int], rest: tuple[int, str, int] | None) -> None:
        if rest is None:  # one statement is its own transaction: one trip to SQLite's thread
            marks = ",".join("?" * len(ids))
            await db.execute(f"DELETE FROM updates WHERE id IN ({marks})", tuple(ids))
            return
        await db.execute("BEGIN")
        try:
            if ids:
                marks = ",".join("?" * len(ids))
                await db.execute(f"DELETE FROM updates WHERE id IN ({marks})", tuple(ids))
            if rest is not None:
                row_id, payload, nbytes = rest
                await db.execute("UPDATE updates SET payload = ?, nbytes = ? WHERE id = ?", (payload, nbytes, row_id))
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise
