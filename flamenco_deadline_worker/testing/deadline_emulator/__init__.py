"""A local AWS Deadline Cloud worker API and CloudWatch Logs endpoint for tests and benchmarks.

with DeadlineEmulator(make_job(simple_template(20))) as emu:
    env = emu.client_env()   # AWS_ENDPOINT_URL_DEADLINE, AWS_ENDPOINT_URL_CLOUDWATCH_LOGS, ...
    ...
    emu.wait_for(lambda s: all(v == "SUCCEEDED" for v in s.task_statuses().values()))
"""

from flamenco_deadline_worker.testing.deadline_emulator.job import Job, make_job, simple_template
from flamenco_deadline_worker.testing.deadline_emulator.server import DeadlineEmulator, Faults, start_emulator
from flamenco_deadline_worker.testing.deadline_emulator.state import Options, ServiceError, ServiceState

__all__ = [
    "DeadlineEmulator",
    "Faults",
    "Job",
    "Options",
    "ServiceError",
    "ServiceState",
    "make_job",
    "simple_template",
    "start_emulator",
]
