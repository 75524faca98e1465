"""Server-side validation of task form submissions against their JSON Schema."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from .errors import FormInvalid

_FORMAT_CHECKER = FormatChecker()


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> Draft202012Validator:
    import json

    return Draft202012Validator(json.loads(schema_json), format_checker=_FORMAT_CHECKER)


def field_errors(schema_json: str, data: Any) -> list[dict[str, str]]:
    """One ``{"field", "message"}`` per problem; nested fields use dots (``items.0.part``)."""
    errors: list[dict[str, str]] = []
    for err in sorted(_validator(schema_json).iter_errors(data), key=lambda e: list(map(str, e.path))):
        path = [str(p) for p in err.absolute_path]
        if err.validator == "required":
            # jsonschema reports a missing property on its parent object; name the property.
            missing = err.message.split("'")[1] if "'" in err.message else ""
            path = [*path, missing] if missing else path
            message = "this field is required"
        elif err.validator == "additionalProperties":
            message = err.message
        else:
            message = err.message
        errors.append({"field": ".".join(path) or "(form)", "message": message})
    return errors


# Deeper structures than any form makes; a deep enough one would break JSON encoding, history
# replay and verification of the case later (Python's recursion limit), so it is refused here.
MAX_DEPTH = 32


def data_problems(data: Any) -> list[tuple[str, str]]:
    """(place, message) for each place in submitted data that cannot be stored: text (or a key)
    holding a NUL character (never meant, and PostgreSQL cannot store it in a text column), or
    nesting deeper than ``MAX_DEPTH``. Walks without recursion, so any depth is reported."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if "\0" in value:
                found.append((path or "(form)", "contains a NUL (0x00) character"))
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth >= MAX_DEPTH:
            found.append((path or "(form)", f"is nested more than {MAX_DEPTH} levels deep"))
            continue
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in reversed(list(items)):
            place = f"{path}.{key}" if path else str(key)
            if "\0" in str(key):
                found.append((place, "contains a NUL (0x00) character"))
            else:
                stack.append((item, place, depth + 1))
    return sorted(found)


def data_errors(data: Any, prefix: str = "") -> list[dict[str, str]]:
    return [{"field": f"{prefix}{place}", "message": message} for place, message in data_problems(data)]


def validate_submission(schema_json: str | None, data: Any) -> None:
    if not isinstance(data, dict):
        raise FormInvalid("form data must be a JSON object", [{"field": "(form)", "message": "expected an object"}])
    errors = data_errors(data)
    if errors:
        raise FormInvalid(f"{len(errors)} form field(s) are invalid", errors)
    if schema_json is None:
        return
    errors = field_errors(schema_json, data)
    if errors:
        raise FormInvalid(f"{len(errors)} form field(s) are invalid", errors)


@lru_cache(maxsize=512)
def _declared(schema_json: str) -> frozenset[str] | None:
    """The top-level fields a form declares; None when it declares none (a free-form task)."""
    import json

    properties = json.loads(schema_json).get("properties")
    return frozenset(properties) if isinstance(properties, dict) and properties else None


def undeclared_errors(schema_json: str | None, data: dict[str, Any]) -> list[dict[str, str]]:
    """Fields of a submission that its form does not have. A completion writes its fields into the
    case data: an undeclared one would overwrite data nobody was asked for (the case reference, a
    handler's result)."""
    declared = _declared(schema_json) if schema_json is not None else None
    if declared is None:
        return []
    return [{"field": key, "message": "not a field of this form"} for key in sorted(data) if key not in declared]

