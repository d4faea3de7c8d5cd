"""A small JSON Schema validator for the subset adaptors need, with messages that name the key.

Supported keywords: type, enum, const, properties, required, additionalProperties, items, minItems,
maxItems, minLength, maxLength, pattern, minimum, maximum, exclusiveMinimum, exclusiveMaximum, anyOf,
oneOf; annotations ($schema, $id, title, description, default, examples, $comment) are ignored.
An unknown keyword is an error in the schema itself, so an adaptor author never believes a rule is
enforced when it is not.  The runtime needs no third-party package and imports in about a millisecond.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "default", "examples", "$comment"})
_KEYWORDS = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "anyOf",
        "oneOf",
    }
)
_TYPE_NAMES = ("object", "array", "string", "integer", "number", "boolean", "null")


class SchemaError(ValueError):
    """The schema itself is malformed or uses a keyword this validator does not support."""


class ValidationError(ValueError):
    """A document does not match its schema.  ``path`` names the offending key, ``[]`` for the root."""

    def __init__(self, path: list[str | int], message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{format_path(path)}: {message}")


def format_path(path: list[str | int]) -> str:
    """``['a', 0, 'b']`` -> ``a[0].b``; the root is ``(top level)``."""
    if not path:
        return "(top level)"
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _type_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _matches_type(value: object, name: str) -> bool:
    actual = _type_of(value)
    if name == "number":
        return actual in ("integer", "number")
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return actual == name


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_schema(schema: Mapping[str, Any], where: str = "schema") -> None:
    """Raise SchemaError when ``schema`` uses something this validator does not know."""
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{where}: a schema must be an object, got {_short(schema)}")
    for key in schema:
        if key not in _KEYWORDS and key not in _ANNOTATIONS:
            raise SchemaError(f"{where}: unsupported JSON schema keyword {key!r}")
    types = schema.get("type")
    for name in [types] if isinstance(types, str) else (types or []):
        if name not in _TYPE_NAMES:
            raise SchemaError(f"{where}: unknown type {name!r}")
    for name, sub in (schema.get("properties") or {}).items():
        check_schema(sub, f"{where}.properties.{name}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        check_schema(extra, f"{where}.additionalProperties")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items")
    for word in ("anyOf", "oneOf"):
        for i, sub in enumerate(schema.get(word) or []):
            check_schema(sub, f"{where}.{word}[{i}]")
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except re.error as exc:
            raise SchemaError(f"{where}.pattern: {exc}") from None


def validate(value: object, schema: Mapping[str, Any], path: list[str | int] | None = None) -> None:
    """Raise ValidationError for the first problem found, depth first."""
    path = list(path or [])
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_matches_type(value, n) for n in names):
            want = " or ".join(names)
            raise ValidationError(path, f"expected {want}, got {_type_of(value)} {_short(value)}")
    if "const" in schema and value != schema["const"]:
        raise ValidationError(path, f"must be {_short(schema['const'])}, got {_short(value)}")
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(_short(c) for c in schema["enum"])
        raise ValidationError(path, f"must be one of {choices}; got {_short(value)}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise ValidationError(path, f"must be at least {schema['minLength']} characters long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise ValidationError(path, f"must be at most {schema['maxLength']} characters long")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise ValidationError(path, f"{_short(value)} does not match the pattern {schema['pattern']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise ValidationError(path, f"must be >= {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            raise ValidationError(path, f"must be <= {schema['maximum']}, got {value}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise ValidationError(path, f"must be > {schema['exclusiveMinimum']}, got {value}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            raise ValidationError(path, f"must be < {schema['exclusiveMaximum']}, got {value}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise ValidationError(path, f"needs at least {schema['minItems']} items, got {len(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise ValidationError(path, f"takes at most {schema['maxItems']} items, got {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], [*path, i])
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                raise ValidationError([*path, name], "is required but missing")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                validate(item, props[name], [*path, name])
            elif extra is False:
                known = ", ".join(sorted(props)) or "none"
                raise ValidationError([*path, name], f"is not an allowed key (allowed: {known})")
            elif isinstance(extra, Mapping):
                validate(item, extra, [*path, name])
    if "anyOf" in schema:
        errors = _try_each(value, schema["anyOf"], path)
        if len(errors) == len(schema["anyOf"]):
            raise _best(errors, path, "matches none of the allowed forms")
    if "oneOf" in schema:
        errors = _try_each(value, schema["oneOf"], path)
        matched = len(schema["oneOf"]) - len(errors)
        if matched == 0:
            raise _best(errors, path, "matches none of the allowed forms")
        if matched > 1:
            raise ValidationError(path, f"matches {matched} of the forms where exactly one is allowed")


def _try_each(value: object, schemas: list[Mapping[str, Any]], path: list[str | int]) -> list[ValidationError]:
    errors = []
    for sub in schemas:
        try:
            validate(value, sub, path)
        except ValidationError as exc:
            errors.append(exc)
    return errors


def _best(errors: list[ValidationError], path: list[str | int], fallback: str) -> ValidationError:
    # The error that got deepest is usually the one the author meant.
    deepest = max(errors, key=lambda e: len(e.path))
    if len(deepest.path) > len(path):
        return deepest
    reasons = "; ".join(e.reason for e in errors)
    return ValidationError(path, f"{fallback} ({reasons})")
