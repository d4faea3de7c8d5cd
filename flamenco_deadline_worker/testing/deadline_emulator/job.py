"""The job the emulator serves: an Open Job Description template expanded into steps and tasks."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from openjd.model import StepParameterSpaceIterator, create_job, decode_job_template, preprocess_job_parameters

SCHEMA = "jobtemplate-2023-09"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(16)}"


@attrs.define
class Task:
    id: str
    step_id: str
    parameters: dict[str, dict[str, str]]  # {"Frame": {"int": "3"}}, as the API carries them
    status: str = "READY"  # READY, ASSIGNED, SUCCEEDED, FAILED, CANCELED


@attrs.define
class Step:
    id: str
    name: str
    template: dict[str, Any]
    dependencies: list[str]
    environments: list[tuple[str, dict[str, Any]]]  # (environment id, environment template)
    tasks: list[Task]
    # The step's OpenJD hostRequirements with parameters resolved: {"amounts": [{"name", "min", "max"}],
    # "attributes": [{"name", "anyOf" or "allOf"}]}; None when it has none.
    host_requirements: dict[str, Any] | None = None


@attrs.define
class Job:
    id: str
    queue_id: str
    template: dict[str, Any]
    parameters: dict[str, dict[str, str]]
    environments: list[tuple[str, dict[str, Any]]]
    steps: list[Step]
    # Job attachments, as CreateJob takes them ({"manifests": [...], "fileSystem": "COPIED"}), and the
    # queue's jobAttachmentSettings ({"s3BucketName", "rootPrefix"}); None: the job has none.
    attachments: dict[str, Any] | None = None
    attachment_settings: dict[str, str] | None = None

    @property
    def log_group(self) -> str:
        return f"/aws/deadline/{self.queue_id}"

    def all_tasks(self) -> list[Task]:
        return [t for s in self.steps for t in s.tasks]

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def environment(self, env_id: str) -> dict[str, Any] | None:
        for eid, tmpl in self.environments + [e for s in self.steps for e in s.environments]:
            if eid == env_id:
                return tmpl
        return None

    def step_ready(self, step: Step) -> bool:
        done = {s.id for s in self.steps if all(t.status == "SUCCEEDED" for t in s.tasks)}
        return all(d in done for d in step.dependencies)


def make_job(
    template: Mapping[str, Any],
    parameters: Mapping[str, Any] | None = None,
    *,
    queue_id: str | None = None,
    attachments: Mapping[str, Any] | None = None,
    attachment_settings: Mapping[str, str] | None = None,
) -> Job:
    """Expand ``template`` (a jobtemplate-2023-09 document) with ``parameters`` into a Job."""
    decoded = decode_job_template(template=dict(template))
    # Typed parameter values (defaults filled in, values checked) as openjd's create_job wants them.
    values = preprocess_job_parameters(
        job_template=decoded,
        job_parameter_values={k: str(v) for k, v in (parameters or {}).items()},
        job_template_dir=Path.cwd(),
        current_working_dir=Path.cwd(),
    )
    expanded = create_job(job_template=decoded, job_parameter_values=values)
    job_id = new_id("job")
    job_params = {name: {p.type.value.lower(): str(p.value)} for name, p in (expanded.parameters or {}).items()}
    names_to_ids: dict[str, str] = {}
    steps: list[Step] = []
    for raw, expanded_step in zip(template["steps"], expanded.steps, strict=True):
        step_id = new_id("step")
        names_to_ids[raw["name"]] = step_id
        tasks: list[Task] = []
        if expanded_step.parameterSpace is not None:
            for task_params in StepParameterSpaceIterator(space=expanded_step.parameterSpace):
                tasks.append(
                    Task(
                        id=f"task-{step_id[5:]}-{len(tasks)}",
                        step_id=step_id,
                        parameters={k: {v.type.name.lower(): str(v.value)} for k, v in task_params.items()},
                    )
                )
        else:
            tasks.append(Task(id=f"task-{step_id[5:]}-0", step_id=step_id, parameters={}))
        envs = [(f"STEP:{step_id}:{e['name']}", dict(e)) for e in raw.get("stepEnvironments", [])]
        deps = [str(d["dependsOn"]) for d in raw.get("dependencies", [])]
        requirements = expanded_step.hostRequirements
        resolved = requirements.model_dump(exclude_none=True, mode="json") if requirements is not None else None
        steps.append(Step(step_id, raw["name"], dict(raw), deps, envs, tasks, resolved))
    for one in steps:
        one.dependencies = [names_to_ids[name] for name in one.dependencies]
    job_envs = [(f"JOB:{job_id}:{e['name']}", dict(e)) for e in template.get("jobEnvironments", [])]
    return Job(
        id=job_id,
        queue_id=queue_id or new_id("queue"),
        template=dict(template),
        parameters=job_params,
        environments=job_envs,
        steps=steps,
        attachments=dict(attachments) if attachments is not None else None,
        attachment_settings=dict(attachment_settings) if attachment_settings is not None else None,
    )


def simple_template(
    tasks: int,
    command: Sequence[str] = ("echo", "task {{Task.Param.N}}"),
    *,
    step_environment: bool = False,
    job_environment: bool = False,
) -> dict[str, Any]:
    """A one-step template of ``tasks`` tasks that each run ``command`` (a handy default for tests)."""
    step: dict[str, Any] = {
        "name": "Work",
        "parameterSpace": {"taskParameterDefinitions": [{"name": "N", "type": "INT", "range": f"1-{tasks}"}]},
        "script": {"actions": {"onRun": {"command": command[0], "args": list(command[1:])}}},
    }
    if step_environment:
        step["stepEnvironments"] = [_echo_env("StepEnv")]
    template: dict[str, Any] = {"specificationVersion": SCHEMA, "name": "EmulatorJob", "steps": [step]}
    if job_environment:
        template["jobEnvironments"] = [_echo_env("JobEnv")]
    return template


def _echo_env(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "script": {
            "actions": {
                "onEnter": {"command": "echo", "args": [f"enter {name}"]},
                "onExit": {"command": "echo", "args": [f"exit {name}"]},
            }
        },
    }
