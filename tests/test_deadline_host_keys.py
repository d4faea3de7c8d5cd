"""The Deadline agent's own environment no longer holds the host's AWS keys once it has read them.

``/proc/<pid>/environ`` shows the environment a process started with, whatever it removes later, and
a session process under the agent's user may read it: the agent re-executes itself with the keys
handed over through a pipe.  Real CLI, real boto3, the emulator (which checks the signed requests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("openjd.sessions")

from flamenco_deadline_worker.testing.deadline_emulator import simple_template  # noqa: E402

pytestmark = pytest.mark.slow

# A session process (jobs run as the agent's user here) reading the agent's start-up environment.
READ_AGENT_ENVIRON = (
    "python3", "-c",
    "import os; ppid = os.getppid()\n"
    "while ppid > 1:\n"
    "    cmd = open(f'/proc/{ppid}/cmdline', 'rb').read()\n"
    "    if b'flamenco_deadline_worker' in cmd: break\n"
    "    ppid = int(open(f'/proc/{ppid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
    "env = open(f'/proc/{ppid}/environ', 'rb').read().split(b'\\0')\n"
    "print('agent', ppid, 'variables', len(env))\n"
    "print('AWS names', sorted(e.split(b'=')[0].decode() for e in env if e.startswith(b'AWS_')))\n"
    "print('holds key', any(b'bootstrap-secret' in e or b'AKIABOOTSTRAPEXAMPLE' in e for e in env))",
)


@pytest.mark.parametrize("optimize", [True, False])
def test_the_host_keys_are_not_in_the_agents_proc_environ(run: Any, optimize: bool) -> None:
    emu, agent = run(
        simple_template(1, READ_AGENT_ENVIRON),
        config=f"deadline_python_optimize = {str(optimize).lower()}\n",
    )
    host = emu.client_env()
    agent.until(lambda s: all(a.status == "SUCCEEDED" for a in s.actions.values() if a.kind == "taskRun")
                and any(a.kind == "taskRun" for a in s.actions.values()), 180, "the task SUCCEEDED")
    # The agent signed its requests with the host keys (the emulator accepted them), yet:
    environ = Path(f"/proc/{agent.proc.pid}/environ").read_bytes()
    assert host["AWS_SECRET_ACCESS_KEY"].encode() not in environ
    assert host["AWS_ACCESS_KEY_ID"].encode() not in environ
    session = emu.read(lambda s: next(iter(s.sessions.values())))
    group = emu.state.job.log_group
    text = agent.until(lambda s: "holds key" in s.log_text(group, session.id) and s.log_text(group, session.id),
                       60, "the task's output in CloudWatch")
    assert f"agent {agent.proc.pid} " in text, text
    assert "holds key False" in text, text
    assert agent.stop() == 0, agent.output()[-3000:]
    assert emu.read(lambda s: list(s.violations)) == []
