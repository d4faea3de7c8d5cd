"""systemd's notification protocol (sd_notify), spoken directly: one datagram per message.

``Notifier.from_environ()`` reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` and takes
them out of the environment, so task processes do not inherit them.  Without ``NOTIFY_SOCKET``
every call is a no-op.  A socket path starting with ``@`` is in the abstract namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, MutableMapping

log = logging.getLogger(__name__)

MAX_STATUS_CHARS = 200


def socket_address(value: str) -> str | bytes:
    """The address to send to: abstract-namespace names ('@name') become a leading NUL byte."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True) -> Notifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog: int | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec)
        if unset:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(name, None)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the watchdog timeout, or None without one."""
        if not self.enabled or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, *assignments: str) -> bool:
        """Send ``assignments`` (e.g. 'READY=1', 'STATUS=...') as one message; False if not sent."""
        if self.address is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, socket_address(self.address))
        except OSError as exc:
            if not self._failed:  # say it once; systemd may simply be gone
                log.warning("could not notify systemd at %s: %s", self.address, exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status[:MAX_STATUS_CHARS]}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text[:MAX_STATUS_CHARS]}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status[:MAX_STATUS_CHARS]}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    async def run_watchdog(self, healthy: Callable[[], bool] | None = None) -> None:
        """Ping the watchdog every half interval while ``healthy()`` says so; returns at once without one.

        It runs on the event loop, so a blocked loop stops the pings and systemd restarts the worker.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            if healthy is None or healthy():
                self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_notifier: Notifier | None = None


def notifier() -> Notifier:
    """The process's notifier, made from the environment on first use."""
    global _notifier
    if _notifier is None:
        _notifier = Notifier.from_environ()
    return _notifier
