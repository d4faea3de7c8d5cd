"""How often the worker asks the Manager for work and for permission to go on: the policy, without I/O.

Time and randomness are handed in, so the policy has unit tests without sleeps.  The figures behind
the defaults are in docs/flamenco-field.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

Clock = Callable[[], float]
Uniform = Callable[[float, float], float]

# Each empty answer makes the next wait this much longer, from the first wait up to the longest.
GROWTH = 1.5
# Workers started together spread out by this fraction of a wait.
JITTER = 0.2


class TaskPollPacing:
    """When to ask for a task again.

    After a task or a state change the worker asks at once (the loop simply does not wait).  After
    an empty answer it waits ``first`` seconds, then longer after each further empty answer, up to
    ``longest``.  Jitter spreads workers out without breaking the two promises: the first wait is
    never longer than ``first`` (new work is picked up quickly after a task), and at the top a wait
    is never shorter than ``longest`` (an idle worker asks at most 60 / longest times a minute).
    """

    def __init__(self, first: float, longest: float, *, uniform: Uniform = random.uniform) -> None:
        self.first = first
        self.longest = max(first, longest)
        self._uniform = uniform
        self._next = first

    def work_arrived(self) -> None:
        """A task or a state change came: the next empty answer starts the ladder again."""
        self._next = self.first

    def no_task(self) -> float:
        """The Manager had nothing: how long to wait before asking again."""
        base = self._next
        self._next = min(self.longest, base * GROWTH)
        low, high = base * (1 - JITTER), base * (1 + JITTER)
        if base <= self.first:
            high = self.first
        if base >= self.longest:
            low = self.longest
        return self._uniform(low, high)


class PermissionPacing:
    """When to ask may-i-run about the running task.

    Any contact about the task counts: the task handed out, an answer to may-i-run, and a task
    update the Manager accepted (a task given to another worker gets 409 on its next update, which
    aborts it at once).  So may-i-run goes out only after ``interval`` seconds without contact.

    A delivered update shows the task is still assigned to us, not that it is still wanted: the
    Manager takes updates of a canceled task, and only may-i-run says "canceled" or "go to sleep".
    So may-i-run also goes out at least every ``longest`` seconds, however many updates flow.
    """

    def __init__(self, interval: float, longest: float, *, clock: Clock = time.monotonic) -> None:
        self.interval = interval
        self.longest = max(interval, longest)
        self._clock = clock
        now = clock()
        self._last_contact = now
        self._last_asked = now

    def update_delivered(self) -> None:
        self._last_contact = self._clock()

    def update_delivered_at(self, when: float) -> None:
        """An update was accepted at ``when`` (the clock's time; earlier contacts change nothing)."""
        self._last_contact = max(self._last_contact, when)

    def asked(self) -> None:
        """May-i-run was asked (whatever the answer, or none: then ask again after ``interval``)."""
        now = self._clock()
        self._last_contact = self._last_asked = now

    def wait(self) -> float:
        """Seconds until may-i-run is due; 0 when it is due now."""
        due = min(self._last_contact + self.interval, self._last_asked + self.longest)
        return max(0.0, due - self._clock())
