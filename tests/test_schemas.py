"""The topic contract's JSON Schemas, their examples and the AsyncAPI document agree.

Offline: the batch schema's ``$ref`` to the envelope resolves through a local
``referencing.Registry`` built from ``schemas/*.schema.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).parents[1] / "schemas"
EXAMPLES = SCHEMAS / "examples"
ID_BASE = "https://citystreams.dev/schemas/v1/"
CONTRACT_TOPICS = {
    "telemetry.raw",
    "devices",
    "telemetry.deadletter",
    "metrics.device",
    "metrics.district",
    "alerts",
}
# Additive to contract v1: published by the pipeline, documented in schemas/README.md.
ADDITIVE_TOPICS = {"telemetry.enriched", "alerts.acks"}
SCHEMA_NAMES = sorted(p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json"))


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = load_json(SCHEMAS / f"{name}.schema.json")
    return schema


REGISTRY: Registry = Registry().with_resources(
    (load_schema(name)["$id"], Resource.from_contents(load_schema(name))) for name in SCHEMA_NAMES
)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name), registry=REGISTRY)


def examples(kind: str) -> list[Any]:
    return [
        pytest.param(path.parent.name, path, id=f"{path.parent.name}/{path.stem}")
        for path in sorted((EXAMPLES / kind).glob("*/*.json"))
    ]


def walk(node: object) -> Iterator[dict[str, Any]]:
    """Every mapping in a parsed JSON/YAML document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_the_nine_record_types_have_schemas() -> None:
    assert SCHEMA_NAMES == [
        "alert",
        "alert-ack",
        "deadletter",
        "device",
        "device-window",
        "district-window",
        "telemetry-batch",
        "telemetry-enriched",
        "telemetry-envelope",
    ]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"{ID_BASE}{name}.schema.json"
    assert schema["title"]
    assert schema["description"]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_property_is_described(name: str) -> None:
    for node in walk(load_schema(name)):
        for prop, subschema in node.get("properties", {}).items():
            assert isinstance(subschema, dict), prop
            assert subschema.get("description"), prop


@pytest.mark.parametrize(("name", "path"), examples("valid"))
def test_valid_example_passes(name: str, path: Path) -> None:
    errors = [e.message for e in validator(name).iter_errors(load_json(path))]
    assert errors == []


@pytest.mark.parametrize(("name", "path"), examples("invalid"))
def test_invalid_example_fails(name: str, path: Path) -> None:
    assert not validator(name).is_valid(load_json(path))


def test_every_example_directory_has_valid_and_invalid_examples() -> None:
    for kind in ("valid", "invalid"):
        dirs = {d.name for d in (EXAMPLES / kind).iterdir() if d.is_dir()}
        assert dirs == set(SCHEMA_NAMES), kind
        for d in dirs:
            assert list((EXAMPLES / kind / d).glob("*.json")), f"{kind}/{d} is empty"


def test_asyncapi_document() -> None:
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert doc["asyncapi"] == "3.0.0"
    assert doc["servers"]["local"]["host"] == "127.0.0.1:9092"
    assert doc["servers"]["local"]["protocol"] == "kafka"
    addresses = [channel["address"] for channel in doc["channels"].values()]
    assert sorted(addresses) == sorted(CONTRACT_TOPICS | ADDITIVE_TOPICS)
    refs = [node["$ref"] for node in walk(doc) if isinstance(node.get("$ref"), str)]
    file_refs = {ref for ref in refs if not ref.startswith("#")}
    assert file_refs == {f"./{name}.schema.json" for name in SCHEMA_NAMES}
    for ref in refs:
        if ref.startswith("#/"):
            target: Any = doc
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
        else:
            assert (SCHEMAS / ref).resolve().is_file(), ref


def test_asyncapi_messages_have_a_string_key() -> None:
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8"))
    for name, message in doc["components"]["messages"].items():
        assert message["bindings"]["kafka"]["key"]["type"] == "string", name
