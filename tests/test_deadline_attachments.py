"""Job attachments end to end: the real worker, the real ``deadline`` library on both sides, a real
S3-compatible server (moto, on 127.0.0.1) and the emulator serving the job, queue and attachment fields."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("deadline.job_attachments")
pytest.importorskip("moto")
from deadline_agent import DeadlineAgentProcess  # noqa: E402

from flamenco_deadline_worker.testing.attachments_job import (  # noqa: E402
    BUCKET,
    SETTINGS,
    attachments_template,
    expected_output,
    read_outputs,
    submit_inputs,
)
from flamenco_deadline_worker.testing.deadline_emulator import DeadlineEmulator, Options, make_job  # noqa: E402
from flamenco_deadline_worker.testing.deadline_emulator.job import new_id  # noqa: E402
from flamenco_deadline_worker.testing.s3server import S3Server  # noqa: E402

pytestmark = pytest.mark.slow
TASKS, FILES, BYTES = 20, 100, 50_000_000


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        server.create_bucket(BUCKET)
        yield server


def start(
    s3: S3Server, tmp_path: Path, template: dict[str, Any], parameters: dict[str, str], **job: Any
) -> tuple[DeadlineEmulator, DeadlineAgentProcess]:
    options = job.pop("options")
    emu = DeadlineEmulator(make_job(template, parameters, **job), options).start()
    return emu, DeadlineAgentProcess(emu, tmp_path / "home", env=s3.client_env())


def test_a_job_with_input_attachments_gets_its_inputs_and_uploads_every_output(s3: S3Server, tmp_path: Path) -> None:
    options = Options(update_interval_seconds=2)
    queue_id = new_id("queue")
    submitted = submit_inputs(s3, options.farm_id, queue_id, tmp_path / "submitter" / "project", files=FILES,
                              total_bytes=BYTES)
    emu, agent = start(
        s3, tmp_path, attachments_template(TASKS, FILES), submitted.parameters, options=options, queue_id=queue_id,
        attachments=submitted.attachments, attachment_settings=SETTINGS,
    )
    try:
        agent.until(lambda s: any(ses.closed for ses in s.sessions.values()), 600, "the session to end")
        session = emu.read(lambda s: next(iter(s.sessions.values())))
        kinds = [(a.kind, a.status) for a in session.actions]
        assert kinds == [("syncInputJobAttachments", "SUCCEEDED")] + [("taskRun", "SUCCEEDED")] * TASKS, (
            kinds, [a.progress_message for a in session.actions], agent.output()[-3000:])
        sync = session.actions[0]
        assert sync.progress_percent == 100.0
        assert any("progressPercent" in u and "completedStatus" not in u for u in sync.updates)  # while it ran
        group = emu.state.job.log_group
        agent.until(lambda s: "task 20 hashed" in s.log_text(group, session.id), 60, "the session log")
        log_text = emu.read(lambda s: s.log_text(group, session.id))
        assert f"Job attachments: {FILES} input file(s), 50.0 MB, downloaded" in log_text
        assert f"{submitted.root} is mapped to " in log_text
        assert "task 20 hashed 5 inputs from " in log_text and f"from {submitted.root}" not in log_text

        outputs = read_outputs(s3, options.farm_id, queue_id, emu.state.job.id)
        assert len(outputs) == TASKS  # one output manifest per task, each with that task's file
        assert all(len(files) == 1 for files in outputs.values())
        uploaded = {path: data.decode() for files in outputs.values() for path, data in files.items()}
        assert uploaded == expected_output(submitted, TASKS, FILES)
        task_ids = {a.task.id for a in session.actions if a.task is not None}
        assert {key.split("/")[-3] for key in outputs} == task_ids  # .../<step>/<task>/<time>_<action>/<root>_output
        assert emu.read(lambda s: list(s.violations)) == []
        assert re.search(rf"Downloaded [\d.]+ MB / 50.0 MB of {FILES} files", log_text)  # the library's progress
        assert "Uploading 1 output file to S3" in log_text
        copies = agent.home / "deadline-sessions" / "attachments" / session.id
        agent.until(lambda s: not copies.exists(), 60, "the session's attachments removed")
    finally:
        agent.stop()
        emu.stop()


def outputs_template(command: str, tasks: int = 2, second_step: str = "") -> dict[str, Any]:
    """A job whose task N runs ``command`` (python, with the output directory and N as arguments); with
    ``second_step``, a step depending on the first runs that on the first one's outputs."""
    def step(name: str, code: str, count: int) -> dict[str, Any]:
        return {
            "name": name,
            "parameterSpace": {"taskParameterDefinitions": [{"name": "N", "type": "INT", "range": f"1-{count}"}]},
            "script": {"actions": {"onRun": {"command": "python3",
                                             "args": ["-c", code, "{{Param.OutDir}}", "{{Task.Param.N}}"]}}},
        }

    steps = [step("Make", command, tasks)]
    if second_step:
        steps.append({**step("Combine", second_step, 1), "dependencies": [{"dependsOn": "Make"}]})
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "OutputsJob",
        "parameterDefinitions": [{"name": "OutDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT"}],
        "steps": steps,
    }


WRITE = "import os, sys; os.makedirs(sys.argv[1], exist_ok=True); open(f'{sys.argv[1]}/part-{sys.argv[2]}.txt', 'w')" \
    ".write(f'part {sys.argv[2]}')"
COMBINE = "import os, sys; d = sys.argv[1]; parts = sorted(p for p in os.listdir(d) if p.startswith('part-')); " \
    "open(f'{d}/all.txt', 'w').write(','.join(open(f'{d}/{p}').read() for p in parts))"


def outputs_only(root: str) -> dict[str, Any]:
    """Attachments of a job with no inputs, only an output directory (as a submitter sends them)."""
    return {"manifests": [{"rootPath": root, "rootPathFormat": "posix", "outputRelativeDirectories": ["out"]}],
            "fileSystem": "COPIED"}


def test_a_step_gets_the_outputs_of_the_step_it_depends_on(s3: S3Server, tmp_path: Path) -> None:
    options = Options(update_interval_seconds=2)
    root = str(tmp_path / "submitter")
    emu, agent = start(
        s3, tmp_path, outputs_template(WRITE, 2, COMBINE), {"OutDir": f"{root}/out"}, options=options,
        attachments=outputs_only(root), attachment_settings=SETTINGS,
    )
    try:
        agent.until(lambda s: any(ses.closed for ses in s.sessions.values()), 300, "the session to end")
        session = emu.read(lambda s: next(iter(s.sessions.values())))
        kinds = [(a.kind, a.definition.get("syncInputJobAttachments"), a.status) for a in session.actions]
        combine = emu.state.job.steps[1].id
        assert kinds == [("syncInputJobAttachments", {}, "SUCCEEDED"), ("taskRun", None, "SUCCEEDED"),
                         ("taskRun", None, "SUCCEEDED"), ("syncInputJobAttachments", {"stepId": combine}, "SUCCEEDED"),
                         ("taskRun", None, "SUCCEEDED")], kinds
        # The step form downloaded the two parts from the Make tasks' output manifests.
        assert (session.actions[3].progress_message or "").startswith("Job attachments: 2 input file(s)")
        outputs = read_outputs(s3, options.farm_id, emu.state.job.queue_id, emu.state.job.id)
        uploaded = {path: data.decode() for files in outputs.values() for path, data in files.items()}
        assert uploaded == {"out/part-1.txt": "part 1", "out/part-2.txt": "part 2", "out/all.txt": "part 1,part 2"}
        assert emu.read(lambda s: list(s.violations)) == []
    finally:
        agent.stop()
        emu.stop()


@pytest.mark.parametrize(
    ("file_system", "settings", "failed", "message"),
    [
        ("VIRTUAL", SETTINGS, "syncInputJobAttachments",
         "the job asks for the VIRTUAL job attachments file system; this worker supports only COPIED"),
        ("COPIED", None, "syncInputJobAttachments", "its queue has no job attachment settings"),
        ("COPIED", {"s3BucketName": "no-such-bucket", "rootPrefix": "Deadline"}, "taskRun",
         "the task succeeded but its outputs could not be uploaded: job attachments: "),
    ],
    ids=["virtual-file-system", "queue-without-settings", "missing-bucket"],
)
def test_attachments_that_cannot_work_fail_the_action_with_the_reason(
    s3: S3Server, tmp_path: Path, file_system: str, settings: dict[str, str] | None, failed: str, message: str
) -> None:
    root = str(tmp_path / "submitter")
    emu, agent = start(
        s3, tmp_path, outputs_template(WRITE, 2), {"OutDir": f"{root}/out"}, options=Options(update_interval_seconds=2),
        attachments={**outputs_only(root), "fileSystem": file_system}, attachment_settings=settings,
    )
    try:
        agent.until(lambda s: any(ses.closed for ses in s.sessions.values()), 300, "the session to end")
        session = emu.read(lambda s: next(iter(s.sessions.values())))
        statuses = [(a.kind, a.status) for a in session.actions]
        index = next(i for i, a in enumerate(session.actions) if a.kind == failed)
        assert statuses[index] == (failed, "FAILED"), statuses
        assert message in (session.actions[index].progress_message or "")
        assert {status for _, status in statuses[index + 1:]} <= {"NEVER_ATTEMPTED"}
        assert emu.state.task_statuses()[session.actions[1].task.id] != "SUCCEEDED"  # type: ignore[union-attr]
        assert emu.read(lambda s: list(s.violations)) == []
    finally:
        agent.stop()
        emu.stop()
