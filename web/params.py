"""Query-string parameters and JSON bodies of the REST API, read the same way by every blueprint."""

from __future__ import annotations

from typing import Any, overload

from flask import request

from engine import InvalidInput


@overload
def int_arg(name: str, default: int, low: int | None = None, high: int | None = None) -> int: ...


@overload
def int_arg(name: str, default: None = None, low: int | None = None, high: int | None = None) -> int | None: ...


def int_arg(name: str, default: int | None = None, low: int | None = None, high: int | None = None) -> int | None:
    """An integer query parameter (``default`` when absent), clamped to ``low``..``high`` when given."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"query parameter '{name}' must be an integer",
                           [{"field": name, "message": "expected an integer"}]) from None
    if not -(2**63) <= value < 2**63:  # the databases' integers are 64-bit
        raise InvalidInput(f"query parameter '{name}' is out of range", [{"field": name, "message": "out of range"}])
    if low is not None:
        value = max(low, value)
    if high is not None:
        value = min(high, value)
    return value


def json_object(required: bool = False) -> dict[str, Any]:
    """The request's JSON object body; an empty body is ``{}`` unless ``required``. Errors name
    what is wrong: no JSON media type, invalid JSON, nesting too deep to parse, not an object."""
    if not request.data:
        if required:
            raise InvalidInput("a JSON object body is required", [{"field": "(body)", "message": "missing"}])
        return {}
    if not request.is_json:
        raise InvalidInput("the request body must be sent as JSON",
                           [{"field": "Content-Type", "message": "expected application/json"}])
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # the parser's own limit, far beyond what forms check (forms.MAX_DEPTH)
        body, deep = None, True
    else:
        deep = False
    if body is None:
        message = "nested too deeply to read" if deep else "invalid JSON"
        raise InvalidInput(f"request body is not valid JSON: {message}", [{"field": "(body)", "message": message}])
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object", [{"field": "(body)", "message": "expected an object"}])
    return body

