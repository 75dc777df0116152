"""The last touches to the API's OpenAPI document, so that it is valid and says every answer.

Django Ninja documents what a route returns on success. The rest is the same for every route and
is added here once: the ``{"error": "..."}`` answers each kind of operation can give, and request
schemas written by hand (``openapi_extra``) whose pydantic ``$defs`` would otherwise point nowhere.
``dashboard/web/tests/test_openapi.py`` validates the result and runs schemathesis against it.
"""

from __future__ import annotations

import copy
from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "one sentence naming the field or the cause"}},
    "required": ["error"],
}
USER_SCHEMES = ("UserToken", "SessionAuth")  # a person's token or session; agents use AgentAuth

# Which operations answer which error, and why.
ERRORS = {
    "400": "Invalid input; the sentence names the field",
    "401": "No credentials, or a token that is unknown or revoked",
    "403": "Signed in, but this role may not do it",
    "404": "No such object (a path parameter names nothing)",
    "409": "Conflicts with the object's current state; nothing changed",
    "429": "Too many requests with this personal token: wait Retry-After seconds",
}


def _errors_for(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    schemes = {name for requirement in operation.get("security") or [] for name in requirement}
    codes = ["400"]
    if schemes:
        codes.append("401")
    if "{" in path:
        codes.append("404")
    if method == "post":  # writes: a role may not be allowed to, or the state has moved on
        codes += ["403", "409"] if schemes & set(USER_SCHEMES) else ["409"]
    if schemes & set(USER_SCHEMES):
        codes.append("429")
    return codes


def _hoist_defs(node: Any, found: dict[str, Any]) -> Any:
    """Move pydantic's ``$defs`` out of a schema into ``found``; point ``#/$defs/X`` refs at components."""
    if isinstance(node, dict):
        for name, definition in (node.pop("$defs", None) or {}).items():
            found[name] = _hoist_defs(definition, found)
        return {
            key: (value.replace("#/$defs/", "#/components/schemas/") if key == "$ref" else _hoist_defs(value, found))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_hoist_defs(item, found) for item in node]
    return node


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the error answers added and stray ``$defs`` hoisted into components."""
    # A copy: Ninja builds each document from the routes' own openapi_extra dicts, which must stay
    # as they are for the next request.
    document = copy.deepcopy(document)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    hoisted: dict[str, Any] = {}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            # Ninja keys its own answers by int, openapi_extra by str: one key per status, merged.
            responses: dict[str, Any] = {}
            for status, response in (operation.get("responses") or {}).items():
                responses[str(status)] = {**responses.get(str(status), {}), **response}
            for status in _errors_for(method, path, operation):
                responses.setdefault(status, {"description": ERRORS[status]})
            for status, response in responses.items():
                if status.startswith("4") and "content" not in response:
                    response["content"] = error_content
            operation["responses"] = dict(sorted(responses.items()))
            if "requestBody" in operation:
                operation["requestBody"] = _hoist_defs(operation["requestBody"], hoisted)
    for name, definition in hoisted.items():
        if name in schemas and schemas[name] != definition:
            raise ValueError(f"OpenAPI component {name!r} is defined twice, differently: rename one model")
        schemas[name] = definition
    return document
