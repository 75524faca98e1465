"""The command's clock.

SpiffWorkflow's timer events read ``datetime.now()`` when they decide whether a timer has fired
and when they compute due times. A command instead sees its own time (``Command.now``, stored as
every event's ``at``), so that a replay, run with the recorded times, takes the same decisions.
Outside a command (no clock set) the real time is used.
"""

from __future__ import annotations

import contextvars
import datetime as dt
from typing import Any

from SpiffWorkflow.bpmn.specs.event_definitions import timer as _timer_module

_current: contextvars.ContextVar[dt.datetime | None] = contextvars.ContextVar("command_clock", default=None)


def now() -> dt.datetime:
    """The running command's time (aware, UTC), else the wall clock."""
    value = _current.get()
    return value if value is not None else dt.datetime.now(dt.UTC)


def set_clock(value: dt.datetime) -> contextvars.Token[dt.datetime | None]:
    return _current.set(value)


def reset_clock(token: contextvars.Token[dt.datetime | None]) -> None:
    _current.reset(token)


class _ClockDatetimeMeta(type):
    # Everything but ``now`` is the real datetime class, including isinstance checks.
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, dt.datetime)

    def __getattr__(cls, name: str) -> Any:
        return getattr(dt.datetime, name)


class _ClockDatetime(metaclass=_ClockDatetimeMeta):
    @staticmethod
    def now(tz: dt.tzinfo | None = None) -> dt.datetime:
        value = _current.get()
        if value is None:
            return dt.datetime.now(tz)
        return value.astimezone(tz) if tz is not None else value.astimezone().replace(tzinfo=None)


def _install() -> None:
    if getattr(_timer_module, "datetime", None) is not _ClockDatetime:
        _timer_module.datetime = _ClockDatetime  # type: ignore[attr-defined]


_install()
