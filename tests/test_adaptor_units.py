"""Unit tests of the adaptor runtime's pure parts: schema subset, path mapping, configuration layering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flamenco_deadline_worker.adaptor.config import ConfigError, env_var_name, load_config
from flamenco_deadline_worker.adaptor.pathmapping import PathMappingError, map_path, parse_rules
from flamenco_deadline_worker.adaptor.schema import SchemaError, ValidationError, check_schema, validate

SCHEMA = {
    "type": "object",
    "properties": {
        "frame": {"type": "integer", "minimum": 1},
        "scale": {"type": "number", "exclusiveMaximum": 10},
        "mode": {"enum": ["fast", "best"]},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}, "maxItems": 2},
        "nested": {"type": "object", "properties": {"x": {"type": ["string", "null"]}}, "required": ["x"]},
        "either": {"anyOf": [{"type": "integer"}, {"type": "string", "minLength": 2}]},
    },
    "required": ["frame"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "frame: is required but missing"),
        ({"frame": True}, "frame: expected integer, got boolean True"),
        ({"frame": 0}, "frame: must be >= 1, got 0"),
        ({"frame": 1, "scale": 10}, "scale: must be < 10, got 10"),
        ({"frame": 1, "mode": "slow"}, "mode: must be one of 'fast', 'best'; got 'slow'"),
        ({"frame": 1, "tags": ["ok", "Bad"]}, "tags[1]: 'Bad' does not match the pattern"),
        ({"frame": 1, "tags": ["a", "b", "c"]}, "tags: takes at most 2 items, got 3"),
        ({"frame": 1, "nested": {}}, "nested.x: is required but missing"),
        ({"frame": 1, "nested": {"x": 3}}, "nested.x: expected string or null, got integer 3"),
        ({"frame": 1, "either": "a"}, "either: matches none of the allowed forms (expected integer, got string"),
        ({"frame": 1, "extra": 1}, "extra: is not an allowed key (allowed: either, frame, mode, nested, scale, tags)"),
        ([], "(top level): expected object, got array"),
    ],
)
def test_schema_messages_name_the_key(doc: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate(doc, SCHEMA)
    assert message in str(info.value)


def test_schema_accepts_valid_documents() -> None:
    validate({"frame": 2, "scale": 1.5, "mode": "best", "tags": ["a"], "nested": {"x": None}, "either": 3}, SCHEMA)
    validate({"frame": 2.0}, SCHEMA)  # 2.0 is an integer in JSON schema


def test_schema_rejects_unknown_keywords() -> None:
    check_schema(SCHEMA)
    with pytest.raises(SchemaError, match="unsupported JSON schema keyword '\\$ref'"):
        check_schema({"properties": {"a": {"$ref": "#/x"}}})
    with pytest.raises(SchemaError, match="unknown type 'int'"):
        check_schema({"type": "int"})


def test_path_mapping() -> None:
    rules = parse_rules(
        {
            "version": "pathmapping-1.0",
            "path_mapping_rules": [
                {"source_path_format": "POSIX", "source_path": "/mnt", "destination_path": "/data"},
                {"source_path_format": "POSIX", "source_path": "/mnt/shots", "destination_path": "/fast/shots"},
                {"source_path_format": "WINDOWS", "source_path": "S:\\Projects", "destination_path": "/projects"},
            ],
        }
    )
    assert map_path("/mnt/shots/a.blend", rules) == "/fast/shots/a.blend"
    assert map_path("/mnt/other/a.blend", rules) == "/data/other/a.blend"
    assert map_path("/mnt", rules) == "/data"
    assert map_path("/mntx/a", rules) == "/mntx/a"
    assert map_path("s:/projects/x/y.png", rules) == "/projects/x/y.png"
    assert map_path("S:\\Projects\\x\\y.png", rules) == "/projects/x/y.png"
    assert map_path("relative/mnt", rules) == "relative/mnt"
    with pytest.raises(PathMappingError, match=r"path_mapping_rules\[0\].source_path: required"):
        parse_rules([{"source_path_format": "POSIX", "destination_path": "/x"}])
    with pytest.raises(PathMappingError, match="must be POSIX or WINDOWS"):
        parse_rules([{"source_path_format": "MAC", "source_path": "/a", "destination_path": "/x"}])


def test_config_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDW_ADAPTOR_SYSTEM_CONFIG_DIR", str(tmp_path / "sys"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user"))
    assert env_var_name("My-Tool") == "FDW_ADAPTOR_MY_TOOL_CONFIG"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "o": {"type": "object"}}}
    default = {"a": 1, "o": {"x": 1, "y": 1}}
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys" / "T.json").write_text(json.dumps({"o": {"y": 2}}))
    user = tmp_path / "user" / "flamenco-deadline-worker" / "adaptors"
    user.mkdir(parents=True)
    (user / "T.json").write_text(json.dumps({"a": 3}))
    config, layers = load_config("T", default, schema)
    assert config == {"a": 3, "o": {"x": 1, "y": 2}}
    assert [layer.source for layer in layers][0] == "package default"
    monkeypatch.setenv("FDW_ADAPTOR_T_CONFIG", '{"a": "four"}')
    with pytest.raises(ConfigError, match=r"key a \(set in \$FDW_ADAPTOR_T_CONFIG\): expected integer"):
        load_config("T", default, schema)
    monkeypatch.setenv("FDW_ADAPTOR_T_CONFIG", "[1]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_config("T", default, schema)
    monkeypatch.delenv("FDW_ADAPTOR_T_CONFIG")
    (user / "T.json").write_text("{not json")
    with pytest.raises(ConfigError, match="T.json: not valid JSON"):
        load_config("T", default, schema)
