"""The one lifecycle (core/lifecycle.py) with a scripted service: the order of start, rounds, drain,
flush and sign-off, and a stop at any moment.  No sleeps: events drive every step."""

from __future__ import annotations

import asyncio

from flamenco_deadline_worker.core.lifecycle import live


class ScriptedService:
    def __init__(self, *, start_code: int | None = None, step_codes: tuple[int | None, ...] = ()) -> None:
        self.calls: list[str] = []
        self.start_code = start_code
        self.step_codes = list(step_codes)
        self.start_gate = asyncio.Event()
        self.start_gate.set()
        self.in_step = asyncio.Event()
        self.steps_block = False

    async def start(self) -> int | None:
        self.calls.append("start")
        await self.start_gate.wait()
        return self.start_code

    async def abandon_start(self) -> None:
        self.calls.append("abandon")

    async def step(self) -> int | None:
        self.calls.append("step")
        self.in_step.set()
        if self.steps_block:
            await asyncio.Event().wait()  # a round that only a stop ends
        return self.step_codes.pop(0) if self.step_codes else None

    async def drain(self) -> None:
        self.calls.append("drain")

    async def sign_off(self) -> None:
        self.calls.append("sign_off")

    async def flush(self, seconds: float) -> bool:
        self.calls.append(f"flush {seconds:g}")
        return True


async def test_a_round_that_ends_the_run_gives_its_code_after_the_whole_shutdown() -> None:
    service = ScriptedService(step_codes=(None, None, 47))
    code = await live(service, asyncio.Event(), service.flush, 10)
    assert code == 47
    assert service.calls == ["start", "step", "step", "step", "drain", "flush 10", "sign_off"]


async def test_a_stop_during_a_round_cancels_it_then_shuts_down_in_order() -> None:
    service = ScriptedService()
    service.steps_block = True
    stop = asyncio.Event()
    running = asyncio.ensure_future(live(service, stop, service.flush, 5))
    await service.in_step.wait()
    stop.set()
    assert await asyncio.wait_for(running, 30) == 0
    assert service.calls == ["start", "step", "drain", "flush 5", "sign_off"]


async def test_a_stop_during_start_up_abandons_it_and_takes_no_work() -> None:
    service = ScriptedService()
    service.start_gate.clear()  # the service cannot be reached: start() retries for ever
    stop = asyncio.Event()
    running = asyncio.ensure_future(live(service, stop, service.flush, 5))
    while "start" not in service.calls:
        await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(running, 30) == 0
    assert service.calls == ["start", "abandon"]


async def test_a_refused_start_exits_with_its_code_and_signs_nothing_off() -> None:
    service = ScriptedService(start_code=3)
    assert await live(service, asyncio.Event(), service.flush, 5) == 3
    assert service.calls == ["start"]
