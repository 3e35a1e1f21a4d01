"""Every error response an operation can give, declared in the OpenAPI document.

The answers that come from the platform rather than from one route — bad credentials, a
missing role, an unknown id, a body too large or not JSON, an invalid parameter, the
database down — are added here to every operation they apply to, as problem documents,
so the document tells clients (and schemathesis) the truth without each route repeating it.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from spawnpoint.kit.errors import PROBLEM_JSON

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem document.",
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Validation errors, each with a JSON pointer to what is wrong.",
            "items": {
                "type": "object",
                "properties": {
                    "pointer": {"type": "string"},
                    "detail": {"type": "string"},
                    "type": {"type": "string"},
                },
                "required": ["pointer", "detail"],
            },
        },
    },
    "required": ["type", "title", "status"],
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}
DESCRIPTIONS = {
    401: "Missing or invalid credentials.",
    403: "The caller's role does not allow this.",
    404: "No such object in the caller's tenant.",
    409: "The object's current state or another object forbids this.",
    413: "The request body is larger than MAX_BODY_BYTES.",
    415: "The request body is not JSON.",
    422: "The request is invalid; `errors` points at each problem.",
    429: "Too many requests (RATE_LIMIT_PER_MINUTE, or failed logins); see Retry-After.",
    503: "A dependency (the database, the policy engine) cannot answer; retry later.",
}
# Where a POST's new object lives, when not under the POST's own path, and its id's pointer.
CREATED_AT = {
    "/api/spawn": ("/api/workspaces", "/workspace/id"),
    "/api/templates/{template_id}/versions": ("/api/templates/{template_id}/versions", "/version"),
}
WRITE_METHODS = frozenset({"post", "put", "patch", "delete"})
ALWAYS_UP = frozenset({"/health", "/live"})


def _applicable(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    public = operation.get("security") == []
    statuses = [422]
    if not public:
        # 429: every authenticated request counts in its principal's and tenant's limits.
        statuses += [401, 403, 429]
    if "{" in path:
        statuses.append(404)
    if method in WRITE_METHODS and not public:
        statuses.append(409)
    # The body limit applies to every request, with a body expected or not.
    statuses.append(413)
    if "requestBody" in operation:
        statuses.append(415)
    if path not in ALWAYS_UP:
        statuses.append(503)
    return statuses


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the platform's error responses on every operation of `schema`, in place."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in _applicable(path, method, operation):
                responses.setdefault(str(status), {"description": DESCRIPTIONS[status]})
            for status, response in responses.items():
                if not status.isdigit() or int(status) < 400:
                    continue
                response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_REF}}
                if response.get("description") in (None, "", "Validation Error"):
                    response["description"] = DESCRIPTIONS.get(
                        int(status), HTTPStatus(int(status)).phrase
                    )
                if int(status) in (429, 503):
                    response.setdefault("headers", RETRY_AFTER)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def document_links(schema: dict[str, Any]) -> dict[str, Any]:
    """Link each create operation to the operations on what it created, in place.

    `POST /api/projects` answers the project; its `id` is the `{project_id}` of every
    operation under `/api/projects/{project_id}`. The links let clients (and schemathesis'
    stateful phase) follow an object from its creation through reads, updates and deletion.
    """
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    for path, operations in paths.items():
        create = operations.get("post")
        if create is None:
            continue
        base, pointer = CREATED_AT.get(path, (path, "/id"))
        inherited = {name: f"$request.path.{name}" for name in re.findall(r"{(\w+)}", base)}
        links: dict[str, Any] = {}
        for target, target_operations in paths.items():
            if not target.startswith(base + "/{"):
                continue
            name = target[len(base) + 2 : target.index("}", len(base))]
            parameters = {**inherited, name: f"$response.body#{pointer}"}
            if set(re.findall(r"{(\w+)}", target)) - set(parameters):
                continue  # needs an id this response does not carry
            for operation in target_operations.values():
                links[operation["operationId"]] = {
                    "operationId": operation["operationId"],
                    "parameters": parameters,
                }
        responses = create.get("responses", {})
        created = next((code for code in ("201", "202", "200") if code in responses), None)
        if links and created is not None:
            responses[created]["links"] = links
    return schema
