"""Queued rows of one ordering domain turned into a Head: pieces within the size limit.

A piece is one Update: consecutive rows merged (log text appended), ending at a status change or
where the action changes, never larger than the limit.  A row whose log does not fit is cut (at a
line end when one is in reach): its first part travels now, and once that is delivered the row
is rewritten to hold the rest, so nothing is sent twice and nothing is dropped.
"""

from __future__ import annotations

import json
import logging

import attrs

from flamenco_deadline_worker.core.model import Head, Update
from flamenco_deadline_worker.upstream.store import Row

log = logging.getLogger(__name__)


@attrs.frozen
class Cut:
    """A row of which only the start is in a piece: what the row becomes once that is delivered."""

    row_id: int
    payload: str
    nbytes: int


@attrs.frozen
class Piece:
    update: Update
    row_ids: tuple[int, ...]  # rows wholly delivered with this piece
    cut: Cut | None = None
    nbytes: int = 0


@attrs.frozen
class Built:
    task_id: str
    pieces: tuple[Piece, ...]
    unreadable: tuple[int, ...]  # rows whose payload is not an update: dropped with an error
    oldest: float  # creation time of the first row
    nbytes: int
    row_bytes: dict[int, int] = attrs.field(factory=dict, eq=False)  # row id -> its stored size

    @property
    def head(self) -> Head:
        return Head(self.task_id, tuple(p.update for p in self.pieces))

    @property
    def urgent(self) -> bool:
        """Anything but log text goes at once; log text may wait to grow."""
        return any(not p.update.log_only for p in self.pieces)


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def fitting_prefix(text: str, room: int, max_lines: int | None) -> int:
    """How many characters of ``text`` fit in ``room`` bytes (and ``max_lines`` lines), ending
    at a line end when one is in reach; at least one character."""
    end = min(len(text), room)
    while end > 1 and utf8_len(text[:end]) > room:
        end = max(1, end - max(1, (utf8_len(text[:end]) - room) // 4 + 1))
    if max_lines is not None:
        newline = -1
        for _ in range(max_lines):
            newline = text.find("\n", newline + 1, end)
            if newline < 0:
                break
        else:
            end = min(end, newline + 1)
    line_end = text.rfind("\n", 0, end)
    return line_end + 1 if line_end >= 0 and end < len(text) else end


def build(
    task_id: str,
    rows: list[Row],
    *,
    max_bytes: int,
    max_pieces: int = 32,
    max_lines: int | None = None,
) -> Built:
    pieces: list[Piece] = []
    unreadable: list[int] = []
    current: Update | None = None
    ids: list[int] = []
    size = lines = 0

    def close(cut: Cut | None = None) -> None:
        nonlocal current, ids, size, lines
        if current is not None:
            pieces.append(Piece(current, tuple(ids), cut, size))
        current, ids, size, lines = None, [], 0, 0

    for row in rows:
        try:
            update = Update.from_json(row.task_id, json.loads(row.payload))
        except (ValueError, TypeError) as exc:
            log.error("update %d of %s is unreadable (%s); dropping it", row.id, row.task_id, exc)
            unreadable.append(row.id)
            continue
        rest = update.log
        while len(pieces) < max_pieces:
            if current is not None and (
                current.status is not None or current.action_id != update.action_id or size >= max_bytes
            ):
                close()
                continue
            room = max_bytes - size
            rest_lines = rest.count("\n") if max_lines is not None else 0
            if utf8_len(rest) <= room and (max_lines is None or lines + rest_lines <= max_lines):
                whole = update if rest is update.log else update.with_log(rest)
                current = whole if current is None else current.merged_with(whole)
                ids.append(row.id)
                size += utf8_len(rest)
                lines += rest_lines
                break
            if current is not None and (room < max_bytes // 4 or (max_lines is not None and lines)):
                close()  # start the long text in a fresh piece rather than a sliver
                continue
            n = fitting_prefix(rest, room, None if max_lines is None else max_lines - lines)
            first = Update(task_id=update.task_id, log=rest[:n], action_id=update.action_id)
            current = first if current is None else current.merged_with(first)
            size += utf8_len(rest[:n])
            rest = rest[n:]
            remainder = update.with_log(rest)
            payload = json.dumps(remainder.to_json(), ensure_ascii=False)
            close(Cut(row.id, payload, len(rest)))
        else:
            break
        if len(pieces) >= max_pieces:
            break
    close()
    return Built(
        task_id,
        tuple(pieces),
        tuple(unreadable),
        rows[0].created if rows else 0.0,
        sum(p.nbytes for p in pieces),
        {r.id: r.nbytes for r in rows},
    )
