"""The SQLite file behind the update queue: schema, migrations, and moving a corrupt file aside."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import attrs

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Index i holds the statements that take a database from version i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
)


class NewerSchema(Exception):
    pass


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


class UpdateStore:
    """Rows of JSON payloads in WAL mode; every write is one committed transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._tx = asyncio.Lock()  # one transaction at a time on the shared connection

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = await self._connect()
        except (sqlite3.DatabaseError, NewerSchema) as exc:
            moved = self._move_aside()
            log.error(
                "update queue %s is unusable (%s); moved it to %s and started an empty queue. "
                "Updates in the old file were NOT delivered; inspect it with sqlite3.",
                self.path, exc, moved,
            )
            self._db = await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed update survives power loss too, not only a crash of the worker.
            await db.execute("PRAGMA synchronous=FULL")
            async with db.execute("PRAGMA quick_check") as cur:
                result = await cur.fetchone()
            if not result or result[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {result[0] if result else 'no answer'}")
            await self._migrate(db)
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
            await db.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[step]:
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {step + 1}")
            await db.execute("COMMIT")
            log.info("update queue %s: schema migrated to version %d", self.path, step + 1)

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
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def insert(self, rows: Iterable[tuple[str, float, int, str]]) -> None:
        """Insert (task_id, created, nbytes, payload) rows in one transaction."""
        db = self.db
        async with self._tx:
            await db.execute("BEGIN")
            try:
                await db.executemany(
                    "INSERT INTO updates (task_id, created, nbytes, payload) VALUES (?, ?, ?, ?)", rows
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    async def heads(self, limit: int = 200) -> list[tuple[str, int]]:
        """The oldest row id of each task with updates, oldest first."""
        sql = "SELECT task_id, MIN(id) AS first FROM updates GROUP BY task_id ORDER BY first LIMIT ?"
        async with self.db.execute(sql, (limit,)) as cur:
            return [(str(r[0]), int(r[1])) for r in await cur.fetchall()]

    async def rows_of(self, task_id: str, limit: int) -> list[Row]:
        sql = "SELECT id, task_id, created, nbytes, payload FROM updates WHERE task_id = ? ORDER BY id LIMIT ?"
        async with self.db.execute(sql, (task_id, limit)) as cur:
            return [Row(*r) for r in await cur.fetchall()]

    async def delete_ids(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        await self.db.execute(f"DELETE FROM updates WHERE id IN ({marks})", tuple(ids))

    async def delete_task(self, task_id: str) -> int:
        async with self.db.execute("DELETE FROM updates WHERE task_id = ?", (task_id,)) as cur:
            return cur.rowcount

    async def row_counts(self) -> dict[str, int]:
        async with self.db.execute("SELECT task_id, COUNT(*) FROM updates GROUP BY task_id") as cur:
            return {str(r[0]): int(r[1]) for r in await cur.fetchall()}

    async def backlog(self) -> Backlog:
        sql = "SELECT COUNT(*), COALESCE(SUM(nbytes), 0), MIN(created) FROM updates"
        async with self.db.execute(sql) as cur:
            row: Any = await cur.fetchone()
        return Backlog(int(row[0]), int(row[1]), row[2])

    async def consume(self, ids: Sequence[int], rest: tuple[int, str, int] | None) -> None:
        """Delete delivered rows and rewrite a partly delivered one to its rest, in one transaction."""
        if not ids and rest is None:
            return
        db = self.db
        async with self._tx:
            await self._consume(db, ids, rest)

    async def _consume(self, db: aiosqlite.Connection, ids: Sequence[int], rest: tuple[int, str, int] | None) -> None:
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
            await db.execute("ROLLBACK")
            raise
