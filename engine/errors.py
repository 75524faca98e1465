"""The engine's one exception hierarchy; ``web/`` maps each class to an HTTP status once."""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base class: ``message`` is for people, ``errors`` itemises what is wrong."""

    status = 400

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body


class NotFound(EngineError):
    status = 404


class Unauthenticated(EngineError):
    status = 401


class Forbidden(EngineError):
    status = 403


class Conflict(EngineError):
    """The command does not fit the case's current state (task not open, held by another...)."""

    status = 409


class InvalidInput(EngineError):
    """Request data is malformed; ``errors`` lists ``{"field", "message"}``."""

    status = 422


class FormInvalid(InvalidInput):
    pass


class DeploymentInvalid(EngineError):
    """``errors`` lists ``{"file", "element", "line", "message"}``; nothing was stored."""

    status = 400


class ScriptError(EngineError):
    """A diagram expression or script was refused or failed."""

    def __init__(self, message: str, line: int | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.source = source


class HandlerMissing(EngineError):
    pass


class Unavailable(EngineError):
    """The database cannot be reached; the caller may retry later."""

    status = 503
