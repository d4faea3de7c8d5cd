"""The pacing policy (core/pacing.py) with a fake clock and chosen random numbers: no sleeps."""

from __future__ import annotations

import random

import pytest

from flamenco_deadline_worker.core.pacing import PermissionPacing, TaskPollPacing


def lowest(low: float, high: float) -> float:
    return low


def highest(low: float, high: float) -> float:
    return high


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_task_poll_waits_grow_from_first_to_longest() -> None:
    pacing = TaskPollPacing(2.0, 20.0, uniform=lambda low, high: (low + high) / 2)
    waits = [pacing.no_task() for _ in range(10)]
    assert waits[0] == pytest.approx(1.8)  # 2 s with only downward jitter
    assert all(a < b for a, b in zip(waits[:6], waits[1:7], strict=True)), waits
    assert waits[-1] == pytest.approx(22.0)  # 20 s with only upward jitter
    assert sum(waits[:6]) < 60, "the backoff reaches its top within the first idle minute"


@pytest.mark.parametrize("uniform", [lowest, highest, random.Random(5).uniform])
def test_task_poll_jitter_keeps_both_promises(uniform: object) -> None:
    pacing = TaskPollPacing(2.0, 20.0, uniform=uniform)  # type: ignore[arg-type]
    first = pacing.no_task()
    assert first <= 2.0, "after a task, new work is asked for within 2 s"
    waits = [pacing.no_task() for _ in range(30)]
    assert all(w >= 20.0 for w in waits[10:]), "idle, at most 3 requests a minute"
    assert all(w <= 24.0 for w in waits)


def test_task_poll_starts_again_when_work_arrives() -> None:
    pacing = TaskPollPacing(2.0, 20.0, uniform=highest)
    for _ in range(10):
        pacing.no_task()
    pacing.work_arrived()
    assert pacing.no_task() == 2.0


def test_idle_minute_request_count_with_random_jitter() -> None:
    """Requests an idle worker sends in its second idle minute: at most 3, for any jitter."""
    for seed in range(50):
        pacing = TaskPollPacing(2.0, 20.0, uniform=random.Random(seed).uniform)
        t, times = 0.0, [0.0]
        while t < 180:
            t += pacing.no_task()
            times.append(t)
        for start in range(60, 120):
            assert sum(1 for x in times if start <= x < start + 60) <= 3


def test_permission_asked_after_interval_without_contact() -> None:
    clock = FakeClock()
    pacing = PermissionPacing(5.0, 10.0, clock=clock)
    assert pacing.wait() == 5.0
    clock.advance(5.0)
    assert pacing.wait() == 0.0
    pacing.asked()
    assert pacing.wait() == 5.0


def test_delivered_updates_postpone_may_i_run_up_to_the_longest_interval() -> None:
    clock = FakeClock()
    pacing = PermissionPacing(5.0, 10.0, clock=clock)
    for _ in range(9):
        clock.advance(1.0)
        pacing.update_delivered()
        assert pacing.wait() > 0, "an update a second keeps may-i-run away"
    clock.advance(1.0)
    pacing.update_delivered()
    assert pacing.wait() == 0.0, "but a canceled task only shows in may-i-run: asked every 10 s at least"
    pacing.asked()
    clock.advance(4.0)
    assert pacing.wait() == 1.0


def test_silent_task_is_asked_about_every_interval() -> None:
    clock = FakeClock()
    pacing = PermissionPacing(5.0, 10.0, clock=clock)
    asked_at = []
    for _ in range(200):
        clock.advance(0.1)
        if pacing.wait() == 0.0:
            asked_at.append(clock.now)
            pacing.asked()
    gaps = [b - a for a, b in zip(asked_at[:-1], asked_at[1:], strict=True)]
    assert gaps and all(g == pytest.approx(5.0) for g in gaps)


def test_update_time_from_the_backend_counts_as_contact() -> None:
    clock = FakeClock()
    pacing = PermissionPacing(5.0, 10.0, clock=clock)
    clock.advance(4.0)
    pacing.update_delivered_at(clock.now - 1.0)
    assert pacing.wait() == pytest.approx(4.0)  # 5 s after the update
    pacing.update_delivered_at(0.0)  # an older time (another task's update) changes nothing
    assert pacing.wait() == pytest.approx(4.0)  # 5 s after the update
