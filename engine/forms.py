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


def nul_fields(data: Any, path: str = "") -> list[str]:
    """Places in submitted data whose text (or key) holds a NUL character: never meant, and
    PostgreSQL cannot store it in a text column."""
    if isinstance(data, str):
        return [path or "(form)"] if "\0" in data else []
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            place = f"{path}.{key}" if path else str(key)
            found += [place] if "\0" in str(key) else nul_fields(value, place)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += nul_fields(value, f"{path}.{i}" if path else str(i))
    return found


def nul_errors(data: Any, prefix: str = "") -> list[dict[str, str]]:
    return [{"field": f"{prefix}{place}", "message": "contains a NUL (0x00) character"} for place in nul_fields(data)]


def validate_submission(schema_json: str | None, data: Any) -> None:
    if not isinstance(data, dict):
        raise FormInvalid("form data must be a JSON object", [{"field": "(form)", "message": "expected an object"}])
    errors = nul_errors(data)
    if errors:
        raise FormInvalid(f"{len(errors)} form field(s) are invalid", errors)
    if schema_json is None:
        return
    errors = field_errors(schema_json, data)
    if errors:
        raise FormInvalid(f"{len(errors)} form field(s) are invalid", errors)
