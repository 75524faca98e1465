"""The registry through which service-task handlers reach the engine (the engine never imports
them), and the context a handler runs in."""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session

from .models import OutboxMessage


@dataclass
class ServiceContext:
    """What a handler may use: the command's session (same transaction), the case, and the
    outbox. Anything written through it commits or rolls back with the command."""

    session: Session
    case_id: int
    process_key: str
    task_spec: str
    data: Mapping[str, Any]
    actor: str
    now: dt.datetime
    outbox: list[OutboxMessage] = field(default_factory=list)

    def notify(self, channel: str, recipient: str, body: str, subject: str = "", template: str = "",
               payload: dict[str, Any] | None = None) -> OutboxMessage:
        msg = OutboxMessage(case_id=self.case_id, channel=channel, recipient=recipient, body=body,
                            subject=subject, template=template, payload=payload or {})
        self.session.add(msg)
        self.outbox.append(msg)
        return msg


class Handler(Protocol):
    def __call__(self, ctx: ServiceContext, **params: Any) -> Mapping[str, Any] | None: ...


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler | None = None) -> Any:
        """Use as ``registry.register("faq.auto_reply", fn)`` or as a decorator."""
        if handler is None:
            def decorator(fn: Handler) -> Handler:
                self._handlers[name] = fn
                return fn
            return decorator
        self._handlers[name] = handler
        return handler

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def names(self) -> set[str]:
        return set(self._handlers)


@dataclass
class CommandInfo:
    """Visible to expression functions (e.g. SLA due dates) while a command runs."""

    case_id: int
    process_key: str
    tx: Any  # engine.db.Transaction
    now: dt.datetime
    notes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def session(self) -> Session:
        return self.tx.session


current_command: contextvars.ContextVar[CommandInfo | None] = contextvars.ContextVar("current_command", default=None)

ExpressionFunctions = Mapping[str, Callable[..., Any]]
