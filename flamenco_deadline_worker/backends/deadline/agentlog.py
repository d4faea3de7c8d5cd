"""The agent's own log to CloudWatch: the stream ``UpdateWorker`` names in its ``log`` answer.

A logging handler on the root logger turns each record (INFO and above) into the line the agent
log file gets (same format, same secret redaction) and hands it to the durable queue under the
``agentlog:<group>:<stream>`` domain; the queue's drain sends it with PutLogEvents within the
service's limits (sink.py), so lines logged during an outage are sent once it ends, even after a
restart.  Records come from any thread; they reach the queue on the event loop, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flamenco_deadline_worker.backends.deadline.handover import HandOver
from flamenco_deadline_worker.backends.deadline.sink import agent_log_key
from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue

log = logging.getLogger(__name__)


def destination(answer: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(group, stream) from UpdateWorker's answer, or None when it names no awslogs stream."""
    config = (answer or {}).get("log") or {}
    options = config.get("options") or {}
    group, stream = options.get("logGroupName"), options.get("logStreamName")
    if config.get("logDriver") != "awslogs" or not group or not stream:
        if config:
            log.warning("the agent log is not sent to CloudWatch: UpdateWorker named log driver %r with options "
                        "%s; only awslogs with a group and a stream is supported", config.get("logDriver"),
                        sorted(options))
        return None
    return str(group), str(stream)


class AgentLogShipper(logging.Handler):
    def __init__(
        self, queue: TaskUpdateQueue, group: str, stream: str, dress: Callable[[logging.Handler], None]
    ) -> None:
        super().__init__(logging.INFO)
        self.queue = queue
        self.key = agent_log_key(group, stream)
        self.where = f"{group}/{stream}"
        self._lines: HandOver[str] = HandOver(lambda lines: queue.put_log(self.key, "".join(lines)))
        dress(self)  # lines as the agent log file has them, secrets redacted by the same filter

    def install(self) -> None:
        self._lines.attach()
        logging.getLogger().addHandler(self)
        log.info("the agent log also goes to CloudWatch Logs %s", self.where)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)
        self._lines.now()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self._lines.add(text)
