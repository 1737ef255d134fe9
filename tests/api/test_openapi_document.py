"""The OpenAPI document itself (no server): every body, answer and error documented,
in each surface's own error format, with examples that are valid for their schemas.

``test_openapi_contract.py`` checks the document against the running API; this file
checks what a reader of the document relies on, in a fraction of a second.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest

from scaleflow.api.app import create_app
from scaleflow.core.settings import Settings

DOC: dict[str, Any] = create_app(Settings()).openapi()
COMPONENTS: dict[str, Any] = DOC["components"]["schemas"]
OPERATIONS = [
    (method.upper(), path, op)
    for path, methods in DOC["paths"].items()
    for method, op in methods.items()
]
# The error bodies of each surface, by path prefix (the longest prefix wins), as
# ``api.errors`` and the broker router build them.
ERROR_MODELS = {
    "/": {"ChemtrailError"},
    "/compute": {"GenisysError"},
    "/service": {"GenisysError"},
    "/api/scaler": {"MemcacheError"},
    "/api/manager": {"MemcacheError"},
    "/api/poolsize": {"MemcacheError"},
    "/api/v2": {"ErrorBody", "DetailedErrorBody", "InvalidConfigBody"},
}
# Routes that change something and take no body: the path says it all.
NO_BODY = {
    "POST /v1/scale/out/{client_class}",
    "POST /v1/scale/in/{client_class}",
    "POST /api/scaler/terminate_all",
    "POST /api/scaler/list",
    "POST /api/v2/clusters/migrations/auto/{cluster_name}/{node_number}",
    "POST /api/v2/clusters/migrations/expand/{cluster_name}",
    "POST /api/v2/clusters/migrations/shrink/{cluster_name}/{new_cluster_nodes_number}",
    "PUT /api/v2/clusters/balance/{cluster_name}",
    "PUT /api/v2/epoch/recovery",
    "PUT /api/v2/epoch/{new_epoch}",
    "POST /api/v2/resources/failures/check",
    "POST /api/v2/failures/{server_proxy_address}/{reporter_id}",
    "POST /api/v2/proxies/failover/{proxy_address}",
}


def op_id(item: tuple[str, str, dict[str, Any]]) -> str:
    return f"{item[0]} {item[1]}"


def refs(node: Any) -> Iterator[str]:
    """The component names ``node`` refers to, directly or through other components."""
    seen: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in seen:
                    seen.add(name)
                    yield name
                    stack.append(COMPONENTS[name])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def direct_refs(schema: dict[str, Any]) -> set[str]:
    """The components a response schema names at its top (itself, or anyOf members)."""
    members = schema.get("anyOf", [schema])
    return {m["$ref"].rsplit("/", 1)[-1] for m in members if "$ref" in m}


def validator(schema: dict[str, Any]) -> Any:
    # Components are reached from the root, as "#/components/schemas/..." says.
    return jsonschema_rs.validator_for({**schema, "components": DOC["components"]})


def examples_of(schema: dict[str, Any]) -> list[Any]:
    found = list(schema.get("examples", []))
    for name in direct_refs(schema):
        found += COMPONENTS[name].get("examples", [])
    return found


def test_no_fastapi_validation_error_and_no_html() -> None:
    text = json.dumps(DOC)
    assert "HTTPValidationError" not in text and '"detail"' not in text
    assert "text/html" not in text
    for html in ("/", "/dashboard", "/api/scaler/"):
        assert html not in DOC["paths"], html
    assert len(OPERATIONS) >= 70


@pytest.mark.parametrize("item", OPERATIONS, ids=op_id)
def test_every_answer_is_documented_with_an_example(item: tuple[str, str, dict[str, Any]]) -> None:
    method, path, op = item
    answers = {s: r for s, r in op["responses"].items() if s.startswith("2")}
    assert answers, f"{method} {path}: no success answer"
    for status, answer in answers.items():
        content = answer.get("content")
        assert content, f"{method} {path} {status}: no content"
        for media, doc in content.items():
            schema = doc.get("schema")
            assert schema, f"{method} {path} {status} {media}: no schema"
            examples = ([doc["example"]] if "example" in doc else []) + examples_of(schema)
            assert examples, f"{method} {path} {status} {media}: no example"
            check = validator(schema)
            for example in examples:
                errors = [e.message for e in check.iter_errors(example)]
                assert not errors, f"{method} {path} {status}: {example!r}: {errors}"


@pytest.mark.parametrize("item", OPERATIONS, ids=op_id)
def test_errors_are_in_the_surface_format(item: tuple[str, str, dict[str, Any]]) -> None:
    method, path, op = item
    allowed = ERROR_MODELS[max((p for p in ERROR_MODELS if path.startswith(p)), key=len)]
    if path == "/v1/system/health":
        allowed = allowed | {"Health"}  # its 503 is the health document, as the original
    errors = {s: r for s, r in op["responses"].items() if s[0] in "45" or s == "default"}
    assert "401" in errors or "default" in errors, f"{method} {path}: no 401"
    if op.get("parameters") or op.get("requestBody"):
        assert "400" in errors, f"{method} {path}: reads input but documents no 400"
    for status, answer in errors.items():
        schema = answer["content"]["application/json"]["schema"]
        named = direct_refs(schema)
        assert named and named <= allowed, f"{method} {path} {status}: {named} not in {allowed}"


@pytest.mark.parametrize(
    "item", [i for i in OPERATIONS if i[0] in ("POST", "PUT", "PATCH")], ids=op_id
)
def test_every_body_is_documented(item: tuple[str, str, dict[str, Any]]) -> None:
    method, path, op = item
    if f"{method} {path}" in NO_BODY:
        assert "requestBody" not in op
        return
    body = op.get("requestBody")
    assert body, f"{method} {path}: its body is not documented"
    for media, doc in body["content"].items():
        schema = doc["schema"]
        examples = examples_of(schema)
        assert examples, f"{method} {path} {media}: no example"
        check = validator(schema)
        for example in examples:
            errors = [e.message for e in check.iter_errors(example)]
            assert not errors, f"{method} {path} {media}: {example!r}: {errors}"


def test_memcache_bodies_take_json_and_forms() -> None:
    memcache = ("/api/manager", "/api/scaler", "/api/poolsize")
    for method, path, op in OPERATIONS:
        if path.startswith(memcache) and "requestBody" in op:
            assert set(op["requestBody"]["content"]) == {
                "application/json",
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            }, f"{method} {path}"
