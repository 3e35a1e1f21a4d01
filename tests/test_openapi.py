"""The OpenAPI document speaks standard JSON Schema and declares every problem response."""

from __future__ import annotations

from typing import Any

from spawnpoint.app import create_app
from spawnpoint.config import Settings

# pydantic's own names for bounds; in a JSON schema they are meaningless and ignored.
NOT_JSON_SCHEMA = {"ge", "le", "gt", "lt", "max_digits", "decimal_places"}


def keys(node: Any, path: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((path, key))
            if path.endswith("/properties"):
                key = f"[{key}]"  # a property's name is not a keyword
            found += keys(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += keys(value, f"{path}/{index}")
    return found


def test_bounds_are_json_schema_keywords(backend_settings: Settings) -> None:
    document = create_app(backend_settings).openapi()
    schemas = document["components"]["schemas"]
    leaked = [
        (path, key)
        for path, key in keys(schemas)
        if key in NOT_JSON_SCHEMA and not path.endswith("/properties")
    ]
    assert leaked == []
    plan = schemas["PlanCreate"]["properties"]
    assert plan["max_workspaces"]["maximum"] == 2**31 - 1
    assert plan["max_cpu"]["default"] == 8
    spec = schemas["TemplateSpecUpdate"]["properties"]["idle_timeout_minutes"]["anyOf"][0]
    assert spec["minimum"] == 1


def test_every_error_response_is_a_problem_document(backend_settings: Settings) -> None:
    document = create_app(backend_settings).openapi()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" in responses, (method, path)
            for status, response in responses.items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        method,
                        path,
                        status,
                    )
            if path not in ("/health", "/live"):
                assert "503" in responses, (method, path)
                assert "Retry-After" in responses["503"]["headers"]
