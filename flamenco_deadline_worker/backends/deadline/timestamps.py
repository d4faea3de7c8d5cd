"""Action timestamps: ISO-8601 text in the queue (JSON), aware datetimes for botocore.

botocore takes a timestamp as text too, but then parses it with its general-purpose parser twice a
call (to validate, to serialize), a tenth of a millisecond each: handed a datetime it does neither.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

FIELDS = ("startedAt", "endedAt", "updatedAt")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def parse_iso(text: str) -> dt.datetime:
    """An aware datetime from ``now_iso`` text (or the "Z" form rows queued by earlier versions hold)."""
    # fromisoformat is C code (strptime is not); Python 3.10's does not take the "Z".
    when = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def for_botocore(update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` with its timestamps as datetimes."""
    return {k: parse_iso(v) if k in FIELDS and isinstance(v, str) else v for k, v in update.items()}
