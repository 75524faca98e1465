"""Results of expression functions, recorded per command so that a replay needs no clock or database.

Diagram expressions may call functions that are not pure: ``now()`` reads the clock, SLA due
dates read policies and calendars, look-ups read tables. While a command runs, every call is
logged with its arguments and result; the runtime stores the log as one ``function_results``
event at the end of the command. A replay answers the same calls, in the same order, from that
event and reports a divergence if the diagram asks for something else.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
from collections.abc import Callable, MutableMapping
from typing import Any

EVENT_TYPE = "function_results"

_calls: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("recorded_calls", default=None)


def start() -> contextvars.Token[list[dict[str, Any]] | None]:
    return _calls.set([])


def stop(token: contextvars.Token[list[dict[str, Any]] | None]) -> None:
    _calls.reset(token)


def current() -> list[dict[str, Any]]:
    return _calls.get() or []


def record_functions(functions: MutableMapping[str, Callable[..., Any]]) -> None:
    """Wrap (once, in place) every function of a script environment so its calls are logged."""
    for name, fn in list(functions.items()):
        if not getattr(fn, "audit_recorded", False):
            functions[name] = _recording(name, fn)


def _recording(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        log = _calls.get()
        if log is not None:
            entry: dict[str, Any] = {"fn": name, "args": encode(list(args)), "result": encode(result)}
            if kwargs:
                entry["kwargs"] = encode(kwargs)
            log.append(entry)
        return result

    call.audit_recorded = True  # type: ignore[attr-defined]
    return call


# Tagged JSON so that dates come back as dates in a replay (expressions may use .year etc.).
def encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$timedelta": value.total_seconds()}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [encode(v) for v in value]
    return str(value)


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (key, raw), = value.items()
            if key == "$datetime":
                return dt.datetime.fromisoformat(raw)
            if key == "$date":
                return dt.date.fromisoformat(raw)
            if key == "$timedelta":
                return dt.timedelta(seconds=raw)
        return {k: decode(v) for k, v in value.items()}
    return value
