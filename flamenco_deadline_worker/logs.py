"""Agent logging: stderr (plain, or bare lines under systemd's journal) and a rotated agent log file.

With ``structured_logs`` the file holds one JSON object per line.  Configured secrets are redacted
from every record before any handler sees it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

AGENT_LOG_NAME = "worker-agent.log"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
REDACTED = "********"


class RedactSecrets(logging.Filter):
    """Replaces each configured secret in a record's final message."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def add(self, secret: str) -> None:
        if secret and secret not in self.secrets:
            self.secrets.append(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for secret in self.secrets:
            message = message.replace(secret, REDACTED)
            if record.exc_text:
                record.exc_text = record.exc_text.replace(secret, REDACTED)
        record.msg, record.args = message, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; structured fields come from ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, default=str)


def under_journal() -> bool:
    """True when stderr goes to systemd's journal, which stamps lines itself."""
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup(
    *,
    level: str = "info",
    logs_dir: Path | None = None,
    structured: bool = False,
    secrets: Iterable[str] = (),
) -> RedactSecrets:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    redact = RedactSecrets(secrets)

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if under_journal() else TEXT_FORMAT))
    stderr.addFilter(redact)
    root.addHandler(stderr)

    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            logs_dir / AGENT_LOG_NAME, maxBytes=20 * 1024 * 1024, backupCount=5, encoding="utf-8"
        )
        file_handler.setFormatter(JsonFormatter() if structured else logging.Formatter(TEXT_FORMAT))
        file_handler.addFilter(redact)
        root.addHandler(file_handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return redact
