"""Query-string parameters of the REST API, parsed the same way by every blueprint."""

from __future__ import annotations

from typing import overload

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
