"""BatchGetJobEntity with a cache that lives and dies with one session (the protocol asks for that)."""

from __future__ import annotations

from typing import Any

from openjd.model import ParameterValue, ParameterValueType, parse_model
from openjd.model.v2023_09 import Environment, StepTemplate

from flamenco_deadline_worker.backends.deadline.api import ApiError, DeadlineApi

SCHEMA = "jobtemplate-2023-09"
_TYPES = {
    "int": ParameterValueType.INT,
    "float": ParameterValueType.FLOAT,
    "string": ParameterValueType.STRING,
    "path": ParameterValueType.PATH,
    "chunkInt": ParameterValueType.CHUNK_INT,
    "bool": ParameterValueType.BOOL,
}


class EntityError(Exception):
    """The service could not give an entity a session action needs (the action fails with this)."""


def parameter_values(raw: dict[str, dict[str, str]]) -> dict[str, ParameterValue]:
    values: dict[str, ParameterValue] = {}
    for name, typed in raw.items():
        kind, value = next(iter(typed.items()))
        if kind not in _TYPES:
            raise EntityError(f"parameter {name!r} has the type {kind!r}, which this agent does not support")
        values[name] = ParameterValue(type=_TYPES[kind], value=value)
    return values


class JobEntities:
    def __init__(self, api: DeadlineApi, ids: dict[str, Any], job_id: str) -> None:
        self.api = api
        self.ids = ids
        self.job_id = job_id
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._steps: dict[str, StepTemplate] = {}  # parsed once: every task of a step runs its script

    async def _get(self, kind: str, key: str, identifier: dict[str, str]) -> dict[str, Any]:
        if (kind, key) in self._cache:
            return self._cache[(kind, key)]
        try:
            answer = await self.api.call_retrying(
                "batch_get_job_entity",
                give_up_after=120,
                **self.ids,
                identifiers=[{kind: {"jobId": self.job_id, **identifier}}],
            )
        except ApiError as exc:
            raise EntityError(f"BatchGetJobEntity for {kind} {key} failed: {exc}") from None
        for error in answer.get("errors", []):
            detail = error.get(kind)
            if detail:
                raise EntityError(
                    f"BatchGetJobEntity could not give {kind} {key}: {detail['code']}: {detail['message']}"
                )
        for entity in answer.get("entities", []):
            if kind in entity:
                self._cache[(kind, key)] = entity[kind]
                return dict(entity[kind])
        raise EntityError(f"BatchGetJobEntity answered without {kind} {key}")

    async def job(self) -> dict[str, Any]:
        details = await self._get("jobDetails", self.job_id, {})
        if details.get("schemaVersion") != SCHEMA:
            raise EntityError(f"the job uses the schema {details.get('schemaVersion')!r}; this agent knows {SCHEMA}")
        return details

    async def step(self, step_id: str) -> StepTemplate:
        if step_id in self._steps:
            return self._steps[step_id]
        details = await self._get("stepDetails", step_id, {"stepId": step_id})
        template = details["template"]
        if "name" not in template:
            template = {"name": "Step", "script": template}
        try:
            step = parse_model(model=StepTemplate, obj=template, supported_extensions=details.get("extensions"))
        except Exception as exc:
            raise EntityError(f"the step template of {step_id} is not valid OpenJD: {exc}") from None
        self._steps[step_id] = step
        return step

    async def attachment_details(self) -> dict[str, Any]:
        """The jobAttachmentDetails entity: the job's manifests and file system."""
        return await self._get("jobAttachmentDetails", self.job_id, {})

    async def step_dependencies(self, step_id: str) -> list[str]:
        """The steps whose outputs ``step_id`` takes as inputs (stepDetails ``dependencies``)."""
        details = await self._get("stepDetails", step_id, {"stepId": step_id})
        return [str(d) for d in details.get("dependencies") or []]

    async def environment(self, env_id: str) -> Environment:
        details = await self._get("environmentDetails", env_id, {"environmentId": env_id})
        try:
            return parse_model(
                model=Environment, obj=details["template"], supported_extensions=details.get("extensions")
            )
        except Exception as exc:
            raise EntityError(f"the environment {env_id} is not valid OpenJD: {exc}") from None
