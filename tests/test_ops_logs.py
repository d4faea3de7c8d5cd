"""Agent logs: every structured record type in a real run, text and JSON forms alike, no secrets anywhere."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import RecordingManager, WorkerStarter, echo_task, python_script_task, until, wait_until

from flamenco_deadline_worker import records
from flamenco_deadline_worker.logs import RedactSecrets

RECORDS_LOGGER = "flamenco_deadline_worker.records: "
STALE_ID = "0f0f0f0f-1111-4222-8333-444444444444"
STALE_SECRET = "stale-secret-Zq9vXw1-never-log-me"


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def test_structured_records_text_and_json_and_no_secrets(
    plain_manager: RecordingManager, workers: WorkerStarter, tmp_path: Path
) -> None:
    manager = plain_manager
    home = tmp_path / "home"
    home.mkdir()
    # Credentials the Manager does not know: loaded, refused, dropped, replaced by a new registration.
    (home / ".flamenco-worker.cfg").write_text(
        f'[flamenco-worker]\nworker_id = "{STALE_ID}"\nworker_secret = "{STALE_SECRET}"\n'
    )
    job = manager.submit_job("records", [
        echo_task("fine"),
        python_script_task("broken", "import sys\nprint('about to fail', flush=True)\nsys.exit(3)\n"),
    ])
    fine, broken = (t.id for t in manager.job_tasks(job))
    # A failed task fails its job: the task to cancel comes in a job of its own.
    job2 = manager.submit_job("records-2", [
        python_script_task("long", "import time\nprint('sleeping', flush=True)\ntime.sleep(120)\n"),
    ])
    long = manager.job_tasks(job2)[0].id
    env = {"FLAMENCO_WORKER_STRUCTURED_LOGS": "true", "FLAMENCO_WORKER_LOG_LEVEL": "debug"}
    worker = await workers.start(manager.url, home, env=env)
    await until(manager, lambda: manager.task(long).status == "active", worker=worker)
    await wait_until(lambda: "sleeping" in manager.task(long).log, 60, "the long task's output")
    assert await worker.stop() == 0
    assert manager.task(fine).status == "completed" and manager.task(broken).status == "failed"

    logs_dir = home / "flamenco-worker-logs"
    entries = json_lines(logs_dir / "worker-agent.log")
    typed = [e for e in entries if "type" in e]
    seen = {(e["type"], e["subtype"]) for e in typed}
    missing = set(records.REQUIRED_FIELDS) - seen - {("FileSystem", "Read")}
    assert not missing, f"record types not seen: {sorted(missing)}"
    for entry in typed:
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR")
        assert entry["subtype"] in records.RECORD_TYPES[entry["type"]], entry
        for field in records.REQUIRED_FIELDS[(entry["type"], entry["subtype"])]:
            assert field in entry, f"{field} missing from {entry}"

    def one(kind: str, subtype: str, **match: Any) -> dict[str, Any]:
        found = [e for e in typed if e["type"] == kind and e["subtype"] == subtype
                 and all(e.get(k) == v for k, v in match.items())]
        assert found, f"no {kind} {subtype} with {match}"
        return found[0]

    new_id = one("Worker", "Create")["worker_id"]
    assert new_id != STALE_ID
    one("Worker", "Load", worker_id=STALE_ID)
    one("Worker", "Delete", worker_id=STALE_ID)
    one("Worker", "ID", worker_id=new_id)
    one("Worker", "Status", worker_id=new_id, status="awake")
    one("Session", "Complete", session_id=fine, queue_id=job, status="completed")
    assert "code 3" in one("Session", "Failed", session_id=broken)["reason"]
    one("Action", "Cancel", session_id=long, action_id=f"{long}:1")
    one("Action", "End", session_id=long, status="canceled")
    one("Session", "Complete", session_id=long, status="canceled")
    task_log = Path(one("Session", "Logs", session_id=fine)["log_file"])
    assert task_log == logs_dir / job / f"{fine}.log" and "fine" in task_log.read_text()
    register = one("API", "Req", operation="POST /register-worker")
    assert register["params"]["secret"] == records.HIDDEN
    assert {e["status_code"] for e in typed if e["type"] == "API" and e["subtype"] == "Resp"} >= {200, 401}
    assert len([e for e in typed if e["type"] == "Metrics"]) >= 2, "metrics at start and at exit"

    # The text form (stderr) carries the same events, in the same order.
    text_events = [line.split(RECORDS_LOGGER, 1)[1] for line in worker.output_text().splitlines()
                   if RECORDS_LOGGER in line]
    assert text_events == [e["message"] for e in typed]
    assert all(e["message"].startswith(f"{e['type']} {e['subtype']}".strip()) for e in typed)

    # Start-up has its own log, closed once signed on.
    bootstrap = json_lines(logs_dir / "worker-agent-bootstrap.log")
    kinds = [(e.get("type"), e.get("subtype")) for e in bootstrap]
    assert ("AgentInfo", "") in kinds and ("Worker", "ID") in kinds
    assert ("Session", "Starting") not in kinds

    new_secret = next(line.split('"')[1] for line in (home / ".flamenco-worker.cfg").read_text().splitlines()
                      if line.startswith("worker_secret"))
    forbidden = [STALE_SECRET, new_secret]
    forbidden += [base64.b64encode(f"{i}:{s}".encode()).decode() for i in (STALE_ID, new_id) for s in forbidden]
    files = [p for p in logs_dir.rglob("*") if p.is_file()] + [worker.output]
    assert len(files) >= 6
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for secret in forbidden:
            assert secret not in text, f"a secret is in {path}"


def test_redaction_covers_structured_fields() -> None:
    redact = RedactSecrets(["s3cr3t"])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", ("s3cr3t",), None)
    record.fields = {"type": "API", "params": {"note": "has s3cr3t inside", "list": ["s3cr3t"]}}
    assert redact.filter(record)
    assert record.getMessage() == "token ********"
    assert record.fields == {"type": "API", "params": {"note": "has ******** inside", "list": ["********"]}}
    assert records.scrub({"Authorization": "Basic x", "nested": [{"sessionToken": "t", "ok": 1}]}) == {
        "Authorization": records.HIDDEN, "nested": [{"sessionToken": records.HIDDEN, "ok": 1}]}


JOURNAL_SNIPPET = """
import logging, os, sys
st = os.fstat(2)
os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + int(sys.argv[1])}"
from flamenco_deadline_worker import logs
logs.setup()
logging.getLogger("probe").warning("hello journal")
logging.getLogger("probe").info("two\\nlines")
"""


def test_journal_lines_have_priority_and_no_timestamp(tmp_path: Path) -> None:
    def stderr_of(offset: int) -> str:
        out = tmp_path / f"stderr-{offset}.txt"
        with out.open("wb") as f:
            subprocess.run([sys.executable, "-c", JOURNAL_SNIPPET, str(offset)], stderr=f, check=True, timeout=60)
        return out.read_text()

    assert stderr_of(0).splitlines() == ["<4>probe: hello journal", "<6>probe: two", "<6>lines"]
    # JOURNAL_STREAM naming another stream (inherited by a child): ordinary timestamped lines.
    other = stderr_of(1)
    assert "WARNING probe: hello journal" in other and not other.startswith("<")


def test_the_agent_log_rotates_at_its_size_and_each_record_reads_the_same_everywhere(tmp_path: Path) -> None:
    """The agent log's own rotation check (size only, no second format or stat per record) still
    rotates near maxBytes into private files; a record sent to two text handlers reads the same in both,
    redacted, though it is formatted once."""
    import os
    import stat

    from flamenco_deadline_worker.logs import PrivateRotatingFileHandler, TextFormatter

    path = tmp_path / "worker-agent.log"
    handler = PrivateRotatingFileHandler(path, maxBytes=2000, backupCount=2, encoding="utf-8")
    handler.setFormatter(TextFormatter())
    redact = RedactSecrets(["hunter2"])
    handler.addFilter(redact)
    second = logging.StreamHandler(open(tmp_path / "stderr.txt", "w", encoding="utf-8"))  # noqa: SIM115
    second.setFormatter(TextFormatter())
    second.addFilter(redact)
    logger = logging.getLogger("test.rotation")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.addHandler(second)
    try:
        for n in range(100):
            logger.info("record %03d with the password hunter2 %s", n, "x" * 40)
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(second)
        handler.close()
        second.close()
    rotated = [tmp_path / "worker-agent.log.1", tmp_path / "worker-agent.log.2"]
    assert all(p.exists() for p in rotated) and not (tmp_path / "worker-agent.log.3").exists()
    for p in [path, *rotated]:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
        assert p.stat().st_size < 2000 + 200, (p, p.stat().st_size)  # at most one record past maxBytes
    kept = "".join(p.read_text() for p in [*reversed(rotated), path]).splitlines()
    assert kept[-1].endswith("record 099 with the password ******** " + "x" * 40)
    assert "hunter2" not in "".join(kept)
    assert (tmp_path / "stderr.txt").read_text().splitlines()[-len(kept):] == kept
