"""One backoff rule for every retried call: doubling delays with jitter, a service's Retry-After
first, and one log line per outage rather than per retry."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

log = logging.getLogger(__name__)


class Backoff:
    def __init__(
        self,
        initial: float = 0.25,
        maximum: float = 30.0,
        *,
        jitter: tuple[float, float] = (0.75, 1.25),
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.rng = rng
        self.delay = 0.0

    def next(self, retry_after: float | None = None) -> float:
        """How long to wait before the next try; the service's own hint wins."""
        self.delay = min(self.maximum, max(self.initial, self.delay * 2))
        if retry_after is not None:
            return max(0.0, retry_after)
        return self.delay * self.rng(*self.jitter)

    def reset(self) -> None:
        self.delay = 0.0

    @property
    def failing(self) -> bool:
        return self.delay > 0.0


class Outage:
    """A Backoff for one kind of call that says once when it starts failing and once when it works."""

    def __init__(self, what: str, clock: Callable[[], float], backoff: Backoff | None = None) -> None:
        self.what = what
        self.clock = clock
        self.backoff = backoff or Backoff(0.5, 30.0, jitter=(0.5, 1.0))
        self.since: float | None = None

    def failed(self, exc: BaseException | str, retry_after: float | None = None) -> float:
        if self.since is None:
            self.since = self.clock()
            log.warning("%s failed (%s); retrying with backoff until it works", self.what, exc)
        else:
            log.debug("%s failed again: %s", self.what, exc)
        hint = retry_after if retry_after is not None else getattr(exc, "retry_after", None)
        return self.backoff.next(hint)

    def succeeded(self) -> None:
        if self.since is not None:
            log.info("%s works again after %.0f s", self.what, self.clock() - self.since)
        self.since = None
        self.backoff.reset()
