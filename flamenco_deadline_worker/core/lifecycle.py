"""One life for every worker, whatever its service.

Start (retried by the service until it works; a stop is honoured at any moment, even then), then
rounds of the service's own sync until a stop or until the service ends the run, then one
shutdown, always in this order: stop the work that runs (its statuses go through the queue),
deliver what is queued within the time allowed, sign off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

EXIT_OK = 0


class Service(Protocol):
    """A service's side of the loop (Flamenco: core/worker.py; Deadline: backends/deadline/agent.py)."""

    async def start(self) -> int | None:
        """Register, sign on, retrying while the service cannot be reached.  None: started; an exit
        code: this worker cannot start (e.g. refused credentials)."""
        ...

    async def abandon_start(self) -> None:
        """A stop came while ``start`` ran: undo what it may have done."""
        ...

    async def step(self) -> int | None:
        """One round of the service's sync; an exit code when the service ends the run."""
        ...

    async def drain(self) -> None:
        """Stop the work that runs; what it reports goes through the queue."""
        ...

    async def sign_off(self) -> None:
        """Tell the service this worker is gone (bounded: the service may be down)."""
        ...


async def live(
    service: Service,
    stop: asyncio.Event,
    flush: Callable[[float], Awaitable[bool]],
    flush_seconds: float,
) -> int:
    """Run ``service`` through its life; the exit code."""
    started = asyncio.ensure_future(service.start())
    if not await _finished_before(started, stop):
        log.info("stop asked while starting: exiting before taking work")
        await service.abandon_start()
        return EXIT_OK
    code = started.result()
    if code is not None:
        return code
    while code is None and not stop.is_set():
        round_ = asyncio.ensure_future(service.step())
        if not await _finished_before(round_, stop):
            break
        code = round_.result()
    log.info("shutting down: stopping the work that runs, delivering queued updates, signing off")
    await service.drain()
    if not await flush(flush_seconds):
        log.warning("some updates are not delivered yet; they stay queued on disk for the next start")
    await service.sign_off()
    return EXIT_OK if code is None else code


async def _finished_before(work: asyncio.Future[Any], stop: asyncio.Event) -> bool:
    """Wait for ``work``; False (and ``work`` cancelled) when ``stop`` is set first."""
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if work.done():
        return True
    work.cancel()
    # On Python < 3.12 wait_for() inside ``work`` can swallow a cancel: the step also checks ``stop``.
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return False
