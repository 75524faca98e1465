"""OpenAPI 3 document generated from the routes as they are registered (no hand-kept copy)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint


@dataclass
class Operation:
    method: str
    rule: str
    summary: str
    body: dict[str, Any] | None
    responses: dict[int, str]
    auth: bool
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    multipart: bool = False


OPERATIONS: list[Operation] = []

ERROR = {"type": "object", "required": ["error"],
         "properties": {"error": {"type": "string"}, "errors": {"type": "array", "items": {"type": "object"}}}}
TASK = {"type": "object", "properties": {k: {} for k in (
    "id", "instance", "process", "name", "spec", "lane", "candidate_groups", "assignee", "state", "due",
    "created_at")}, "required": ["id", "instance", "process", "name", "spec", "state"]}
INSTANCE = {"type": "object", "properties": {
    "id": {"type": "integer"}, "process": {"type": "string"}, "version": {"type": "integer"},
    "status": {"type": "string", "enum": ["running", "waiting", "completed", "error", "cancelled"]},
    "data": {"type": "object"}, "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
    "created_at": {"type": "string"}, "updated_at": {"type": "string"}},
    "required": ["id", "process", "version", "status", "data", "tasks"]}
SCHEMAS: dict[str, dict[str, Any]] = {"Error": ERROR, "Task": TASK, "Instance": INSTANCE}


def route(bp: Blueprint, rule: str, method: str, summary: str, *, body: dict[str, Any] | None = None,
          responses: dict[int, str] | None = None, auth: bool = True,
          params: dict[str, dict[str, Any]] | None = None, multipart: bool = False) -> Callable[..., Any]:
    """Register a Flask view and describe it for the OpenAPI document in one place."""
    full_rule = (bp.url_prefix or "") + rule

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        OPERATIONS.append(Operation(method.upper(), full_rule, summary, body, responses or {200: "object"}, auth,
                                    params or {}, multipart))
        bp.add_url_rule(rule, endpoint=fn.__name__, view_func=fn, methods=[method.upper()])
        return fn

    return decorator


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params = []

    def repl(m: re.Match[str]) -> str:
        conv, name = (m.group(1) or "string"), m.group(2)
        params.append({"name": name, "in": "path", "required": True,
                       "schema": {"type": "integer" if conv == "int" else "string"}})
        return "{" + name + "}"

    return re.sub(r"<(?:(\w+):)?(\w+)>", repl, rule), params


def _response_schema(kind: str) -> dict[str, Any]:
    if kind in SCHEMAS:
        return {"$ref": f"#/components/schemas/{kind}"}
    if kind == "xml":
        return {"type": "string"}
    if kind == "array":
        return {"type": "array"}
    return {"type": "object"}


def document(title: str, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path, path_params = _path(op.rule)
        responses: dict[str, Any] = {}
        for status, kind in sorted(op.responses.items()):
            media = "application/xml" if kind == "xml" else "application/json"
            responses[str(status)] = {"description": kind, "content": {media: {"schema": _response_schema(kind)}}}
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        # Errors every operation of this shape can answer, from the one mapping in web/errors.py.
        common: list[tuple[int, str]] = [(503, "database unavailable")]
        if op.auth:
            common += [(401, "not signed in"), (403, "not allowed")]
        if path_params:
            common.append((404, "not found"))
        if op.body is not None or op.params:
            common.append((422, "invalid input"))
        if op.method != "GET":
            common.append((409, "conflicts with the case's current state"))
        for status, description in common:
            responses.setdefault(str(status), {"description": description, "content": error})
        spec: dict[str, Any] = {"summary": op.summary, "operationId": f"{op.method.lower()}_{path}",
                                "parameters": path_params + [
                                    {"name": n, "in": "query", "required": False, "schema": s}
                                    for n, s in op.params.items()],
                                "responses": responses}
        if op.auth:
            spec["security"] = [{"bearer": []}, {"session": []}]
        if op.body is not None:
            media = "multipart/form-data" if op.multipart else "application/json"
            spec["requestBody"] = {"required": True, "content": {media: {"schema": op.body}}}
        paths.setdefault(path, {})[op.method.lower()] = spec
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "session": {"type": "apiKey", "in": "cookie", "name": "session"}},
        },
    }
