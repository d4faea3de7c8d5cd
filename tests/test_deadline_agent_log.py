"""End to end: the agent's own log reaches the CloudWatch stream UpdateWorker names, through the
durable queue, within PutLogEvents' limits, and loses nothing across an outage of PutLogEvents."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("openjd.sessions")
from deadline_agent import DeadlineAgentProcess, Start  # noqa: E402

from flamenco_deadline_worker.testing.deadline_emulator import Options, ServiceState, simple_template  # noqa: E402

pytestmark = pytest.mark.slow

SHIPPING = "the agent log also goes to CloudWatch Logs"


def succeeded(state: ServiceState) -> int:
    return sum(v == "SUCCEEDED" for v in state.task_statuses().values())


def worker_id(state: ServiceState) -> Any:
    worker = next(iter(state.workers.values()), None)
    return worker.id if worker is not None and worker.status == "STARTED" else None


def test_agent_log_lines_reach_cloudwatch_and_survive_an_outage(run: Start) -> None:
    emu, agent = run(
        simple_template(12, ("python3", "-c", "import time; time.sleep(0.3); print('task {{Task.Param.N}}')")),
        Options(update_interval_seconds=1, tasks_ahead=2),
    )
    wid = agent.until(worker_id, 60, "the worker STARTED")
    group = f"/aws/deadline/{emu.state.options.farm_id}/{emu.state.options.fleet_id}"
    agent.until(lambda s: SHIPPING in s.agent_log_text(wid), 60, "the agent log's first line in CloudWatch")
    # PutLogEvents fails (500) for a while; the agent goes on working and logging meanwhile.
    emu.faults.operations = frozenset({"PutLogEvents"})
    emu.faults.error_rate = 1.0
    agent.until(lambda s: any(r[1:] == ("PutLogEvents", 500) for r in emu.requests), 60, "a PutLogEvents failing")
    before = emu.read(lambda s: len(s.log_streams[(group, wid)]))
    agent.until(lambda s: succeeded(s) >= 6, 180, "6 tasks SUCCEEDED during the outage")
    assert emu.read(lambda s: len(s.log_streams[(group, wid)])) == before  # nothing got through meanwhile
    emu.faults.error_rate = 0.0
    agent.until(lambda s: succeeded(s) == 12, 180, "every task SUCCEEDED")

    # Every line the agent log file has from the shipper's start on is in the stream, in order.
    local = agent.agent_log().splitlines()
    local = [line or " " for line in local[next(i for i, x in enumerate(local) if SHIPPING in x) :]]
    assert sum("Action End" in line for line in local) >= 12, local[:20]  # the tasks' records among them

    def all_arrived(state: ServiceState) -> bool:
        sent = state.agent_log_text(wid).splitlines()
        return len(sent) >= len(local) and set(local) <= set(sent)

    agent.until(all_arrived, 120, "every agent log line in CloudWatch")
    sent = emu.read(lambda s: s.agent_log_text(wid).splitlines())
    positions = [sent.index(line) for line in local]
    assert positions == sorted(positions), "agent log lines arrived out of order"
    assert all(sent.count(line) == local.count(line) for line in local), "a line arrived twice"
    assert emu.read(lambda s: list(s.violations)) == []  # 5 calls/s per stream and the other limits kept
    assert agent.stop() == 0


def test_agent_log_lines_queued_in_an_outage_go_out_after_a_restart(run: Start) -> None:
    emu, agent = run(simple_template(3, ("echo", "task {{Task.Param.N}}")), Options(update_interval_seconds=1))
    wid = agent.until(worker_id, 60, "the worker STARTED")
    agent.until(lambda s: SHIPPING in s.agent_log_text(wid), 60, "the agent log's first line in CloudWatch")
    emu.faults.operations = frozenset({"PutLogEvents"})
    emu.faults.error_rate = 1.0
    agent.until(lambda s: succeeded(s) == 3, 120, "3 tasks SUCCEEDED during the outage")
    assert agent.stop() == 0  # the lines logged since stay in the queue file
    lines = agent.agent_log().splitlines()
    first = next(i for i, x in enumerate(lines) if SHIPPING in x)
    last = next(i for i, x in enumerate(lines) if "shutting down: stopping the work" in x)
    queued = [line or " " for line in lines[first : last + 1]]
    assert not set(queued) <= set(emu.read(lambda s: s.agent_log_text(wid)).splitlines())
    emu.faults.error_rate = 0.0
    again = DeadlineAgentProcess(emu, agent.home)
    try:
        again.until(lambda s: set(queued) <= set(s.agent_log_text(wid).splitlines()), 120,
                    "the first run's queued lines in CloudWatch")
    finally:
        assert again.stop() == 0
    assert emu.read(lambda s: list(s.violations)) == []
