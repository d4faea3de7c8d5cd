"""Agent logging: stderr (plain, or bare lines under systemd's journal) and a rotated agent log file.

With ``structured_logs`` the file holds one JSON object per line.  Configured secrets are redacted
from every record (its message and its structured fields) before any handler sees it.

Start-up also goes to ``worker-agent-bootstrap.log`` (rewritten at each start, closed once the
worker is signed on), with the lines logged before the configuration was known.  Under systemd
(``JOURNAL_STREAM`` naming our stderr) lines carry no timestamp and a ``<N>`` priority prefix,
which journald turns into the entry's priority.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flamenco_deadline_worker import private

AGENT_LOG_NAME = "worker-agent.log"
BOOTSTRAP_LOG_NAME = "worker-agent-bootstrap.log"
JOURNAL_FORMAT = "%(name)s: %(message)s"
# syslog priorities for journald's "<N>" line prefix
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
REDACTED = "********"
# Third-party loggers whose DEBUG output holds payloads: kept at INFO or above.
CHATTY_LOGGERS = ("aiosqlite", "botocore", "boto3", "s3transfer", "urllib3", "aiohttp.client",
                  "aiohttp.internal", "charset_normalizer")


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
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = self._scrub(fields)
        return True

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._scrub(v) for v in value]
        return value


class PrivateFileHandler(logging.FileHandler):
    """A FileHandler whose file, when it creates one, is 0600."""

    def _open(self):  # type: ignore[no-untyped-def]
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,
                    opener=private.opener)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose files (the rotated-in ones too) are 0600 when it creates them."""

    _regular = True  # whether the open file is a regular one (only those rotate)

    def _open(self) -> Any:
        stream = open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,
                      opener=private.opener)
        self._regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
        return stream

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """Rotate once the file has reached maxBytes.  The stdlib's check formats every record a
        second time and stats the file twice per record; a Deadline agent logs two records per
        action, so that showed in its tasks per second.  The file may pass maxBytes by one record."""
        if self.stream is None:
            self.stream = self._open()
        return self.maxBytes > 0 and self._regular and self.stream.tell() >= self.maxBytes


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT lines.  A record goes to up to three handlers (stderr, the file, CloudWatch) with
    the same format: it is formatted once and the text kept on the record for the others."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        cached = record.__dict__.get("_text_line")
        if cached is None or cached[0] != record.getMessage() or cached[2] != record.exc_text:
            text = super().format(record)
            cached = (record.message, text, record.exc_text)
            record.__dict__["_text_line"] = cached
        return str(cached[1])


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


class JournalFormatter(logging.Formatter):
    """Plain lines for journald: no timestamp (the journal has one) and a ``<N>`` priority prefix."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITIES.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        # journald reads the prefix per line: give continuation lines (tracebacks) the same priority.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


def under_journal() -> bool:
    """True when stderr goes to systemd's journal, which stamps lines itself.

    ``JOURNAL_STREAM`` is "<device>:<inode>" of the journal's stream; it is inherited by children
    whose stderr may go elsewhere, so it counts only when it names our stderr.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class _Bootstrap:
    """Start-up lines kept in memory until the logs directory is known."""

    def __init__(self) -> None:
        self.buffer: logging.handlers.BufferingHandler | None = None
        self.file: logging.Handler | None = None


_bootstrap = _Bootstrap()
_opened: list[logging.Handler] = []
_active_redact: RedactSecrets | None = None


def add_secret(secret: str) -> None:
    """Redact ``secret`` from now on (e.g. a secret created at registration)."""
    if _active_redact is not None:
        _active_redact.add(secret)


def dress_like_agent_log(handler: logging.Handler) -> None:
    """Give ``handler`` the agent log file's line format and the same secret redaction (for a
    handler that sends the agent log elsewhere, e.g. to CloudWatch)."""
    handler.setFormatter(TextFormatter())
    for installed in logging.getLogger().handlers:
        if getattr(installed, "baseFilename", "").endswith(AGENT_LOG_NAME) and installed.formatter is not None:
            handler.setFormatter(installed.formatter)
        for flt in installed.filters:
            if isinstance(flt, RedactSecrets) and flt not in handler.filters:
                handler.addFilter(flt)


def end_bootstrap() -> None:
    """Start-up is over (the worker is signed on): close the bootstrap log."""
    root = logging.getLogger()
    for name in ("buffer", "file"):
        handler = getattr(_bootstrap, name)
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
            if handler in _opened:
                _opened.remove(handler)
            setattr(_bootstrap, name, None)


def setup(
    *,
    level: str = "info",
    logs_dir: Path | None = None,
    structured: bool = False,
    secrets: Iterable[str] = (),
    bootstrap: bool = False,
) -> RedactSecrets:
    """(Re)configure the root logger.

    ``bootstrap``: without ``logs_dir``, keep records in memory for the bootstrap log; with it,
    write them and what follows to ``<logs_dir>/worker-agent-bootstrap.log`` until ``end_bootstrap()``.
    """
    global _active_redact
    root = logging.getLogger()
    buffered: list[logging.LogRecord] = []
    if _bootstrap.buffer is not None:
        buffered = list(_bootstrap.buffer.buffer)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    # Close only the files this module opened; other handlers (a test runner's) are not ours.
    while _opened:
        _opened.pop().close()
    _bootstrap.buffer = _bootstrap.file = None
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    redact = RedactSecrets(secrets)
    _active_redact = redact

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JournalFormatter() if under_journal() else TextFormatter())
    stderr.addFilter(redact)
    root.addHandler(stderr)

    if bootstrap and logs_dir is None:
        _bootstrap.buffer = logging.handlers.BufferingHandler(10_000)
        _bootstrap.buffer.addFilter(redact)
        root.addHandler(_bootstrap.buffer)
    elif bootstrap and logs_dir is not None:
        private.make_dirs(logs_dir)
        boot = PrivateFileHandler(logs_dir / BOOTSTRAP_LOG_NAME, mode="w", encoding="utf-8")
        boot.setFormatter(JsonFormatter() if structured else TextFormatter())
        boot.addFilter(redact)
        for record in buffered:
            if record.levelno >= root.level and redact.filter(record):
                boot.handle(record)
        root.addHandler(boot)
        _bootstrap.file = boot
        _opened.append(boot)

    if logs_dir is not None:
        private.make_dirs(logs_dir)
        file_handler = PrivateRotatingFileHandler(
            logs_dir / AGENT_LOG_NAME, maxBytes=20 * 1024 * 1024, backupCount=5, encoding="utf-8"
        )
        file_handler.setFormatter(JsonFormatter() if structured else TextFormatter())
        file_handler.addFilter(redact)
        root.addHandler(file_handler)
        _opened.append(file_handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Their DEBUG records carry SQL parameters, request and answer bodies, credentials: never let them
    # through, whatever the worker's own level (-v).
    for name in CHATTY_LOGGERS:
        chatty = logging.getLogger(name)
        chatty.setLevel(max(chatty.level, logging.INFO))
    return redact
