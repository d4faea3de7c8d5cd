"""botocore's own service models, used to parse requests and check them and our answers.

Every request the emulator takes is turned back into the parameters the client passed, then
checked against the operation's input shape: types, required members, unions, lengths, ranges,
patterns and enums.  Every answer is checked against the output shape before it is sent, so the
emulator cannot drift from what boto3 expects.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import attrs
import botocore.session
from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StringShape, StructureShape
from botocore.utils import parse_timestamp

DEADLINE_OPERATIONS = (
    "CreateWorker",
    "AssumeFleetRoleForWorker",
    "UpdateWorker",
    "UpdateWorkerSchedule",
    "BatchGetJobEntity",
    "AssumeQueueRoleForWorker",
    "DeleteWorker",
)
LOGS_OPERATIONS = ("PutLogEvents",)

_session = botocore.session.get_session()
DEADLINE: ServiceModel = _session.get_service_model("deadline", api_version="2023-10-12")
LOGS: ServiceModel = _session.get_service_model("logs")


class RequestInvalid(Exception):
    """The request does not match the service model (the service answers ValidationException)."""


@attrs.frozen
class Route:
    operation: OperationModel
    method: str
    pattern: re.Pattern[str]


def _route(op: OperationModel) -> Route:
    uri = op.http["requestUri"].split("?")[0]
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(uri))
    return Route(op, op.http["method"], re.compile(f"^{regex}$"))


DEADLINE_ROUTES = [_route(DEADLINE.operation_model(name)) for name in DEADLINE_OPERATIONS]


def match_route(method: str, path: str) -> tuple[OperationModel, dict[str, str]] | None:
    for route in DEADLINE_ROUTES:
        if route.method == method:
            found = route.pattern.match(path)
            if found:
                return route.operation, {k: unquote(v) for k, v in found.groupdict().items()}
    return None


def rest_json_params(
    op: OperationModel,
    path_params: Mapping[str, str],
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: Any,
) -> dict[str, Any]:
    """The client's parameters, rebuilt from a rest-json request."""
    params: dict[str, Any] = {}
    if body is not None and not isinstance(body, dict):
        raise RequestInvalid("the request body is not a JSON object")
    body = dict(body or {})
    shape = op.input_shape
    assert shape is not None
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "uri":
            if wire in path_params:
                params[name] = path_params[wire]
        elif location == "querystring":
            if wire in query:
                params[name] = query[wire]
        elif location == "header":
            if wire in headers:
                params[name] = headers[wire]
        elif name in body:
            params[name] = body.pop(name)
    if body:
        raise RequestInvalid(f"unknown members in the request body: {sorted(body)}")
    return params


def check(shape: Shape, value: Any, where: str = "") -> list[str]:
    """Problems of ``value`` against ``shape`` (empty when it conforms)."""
    path = where or shape.name
    kind = shape.type_name
    if kind == "structure" and shape.metadata.get("document"):
        return []
    if isinstance(shape, StructureShape):
        if not isinstance(value, Mapping):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        problems = [f"{path}: unknown member {k!r}" for k in value if k not in shape.members]
        problems += [f"{path}: missing required member {k!r}" for k in shape.required_members if k not in value]
        if shape.metadata.get("union") and len([k for k in value if value[k] is not None]) != 1:
            problems.append(f"{path}: a union needs exactly one member, got {sorted(value)}")
        for k, v in value.items():
            if k in shape.members:
                problems += check(shape.members[k], v, f"{path}.{k}")
        return problems
    if isinstance(shape, ListShape):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        problems = _length(shape, len(value), path)
        for i, item in enumerate(value):
            problems += check(shape.member, item, f"{path}[{i}]")
        return problems
    if isinstance(shape, MapShape):
        if not isinstance(value, Mapping):
            return [f"{path}: expected a map, got {type(value).__name__}"]
        problems = _length(shape, len(value), path)
        for k, v in value.items():
            problems += check(shape.key, k, f"{path} key")
            problems += check(shape.value, v, f"{path}[{k!r}]")
        return problems
    if isinstance(shape, StringShape):
        if not isinstance(value, str):
            return [f"{path}: expected a string, got {type(value).__name__}"]
        problems = _length(shape, len(value), path)
        if shape.enum and value not in shape.enum:
            problems.append(f"{path}: {value!r} is not one of {shape.enum}")
        pattern = shape.metadata.get("pattern")
        if pattern and not _matches(pattern, value):
            problems.append(f"{path}: {value!r} does not match the pattern {pattern!r}")
        return problems
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{path}: expected an integer, got {type(value).__name__}"]
        return _range(shape, value, path)
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{path}: expected a number, got {type(value).__name__}"]
        return _range(shape, value, path)
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean"]
    if kind == "timestamp":
        if isinstance(value, dt.datetime):
            return []
        try:
            parse_timestamp(value)
        except (ValueError, TypeError):
            return [f"{path}: {value!r} is not a timestamp"]
        return []
    return []


def _length(shape: Shape, n: int, path: str) -> list[str]:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and n < low:
        return [f"{path}: length {n} is below the minimum {low}"]
    if high is not None and n > high:
        return [f"{path}: length {n} is above the maximum {high}"]
    return []


def _range(shape: Shape, n: float, path: str) -> list[str]:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and n < low:
        return [f"{path}: {n} is below the minimum {low}"]
    if high is not None and n > high:
        return [f"{path}: {n} is above the maximum {high}"]
    return []


_patterns: dict[str, re.Pattern[str] | None] = {}


def _matches(pattern: str, value: str) -> bool:
    if pattern not in _patterns:
        try:
            _patterns[pattern] = re.compile(pattern)
        except re.error:
            _patterns[pattern] = None  # an ECMAScript construct Python lacks: not checked
    compiled = _patterns[pattern]
    return compiled is None or compiled.fullmatch(value) is not None


def to_wire(shape: Shape, value: Any) -> Any:
    """Our answer as JSON: timestamps as ISO-8601 (deadline) or epoch seconds."""
    if isinstance(shape, StructureShape) and not shape.metadata.get("document"):
        return {k: to_wire(shape.members[k], v) for k, v in value.items() if v is not None}
    if isinstance(shape, ListShape):
        return [to_wire(shape.member, v) for v in value]
    if isinstance(shape, MapShape):
        return {k: to_wire(shape.value, v) for k, v in value.items()}
    if shape.type_name == "timestamp" and isinstance(value, dt.datetime):
        if shape.serialization.get("timestampFormat") == "iso8601":
            return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return value.timestamp()
    return value
