"""Maps engine errors and HTTP errors to problem JSON (for /api) once, in one place."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from engine import EngineError

log = logging.getLogger("aftercare.web")


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(EngineError)
    def engine_error(exc: EngineError) -> tuple[Response, int] | tuple[str, int]:
        if exc.status in (401, 403):
            hook = app.extensions["aftercare"].on_denied
            if hook is not None:
                hook(exc)
        if wants_json():
            return jsonify(exc.to_dict()), exc.status
        page = app.extensions["aftercare"].error_page
        if page is not None:
            return page(exc.status, exc.message, exc.errors), exc.status
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int] | Response:
        status = exc.code or 500
        if status in (401, 403):  # e.g. a CSRF refusal raised by Flask itself: recorded like ours
            hook = app.extensions["aftercare"].on_denied
            if hook is not None:
                hook(exc)
        if wants_json():
            return jsonify({"error": exc.description or exc.name}), status
        page = app.extensions["aftercare"].error_page
        if page is not None:
            return page(status, exc.description or exc.name, []), status
        return exc.get_response()

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int] | tuple[str, int]:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if wants_json():
            return jsonify({"error": "internal error; it has been logged"}), 500
        page = app.extensions["aftercare"].error_page
        if page is not None:
            return page(500, "internal error; it has been logged", []), 500
        return jsonify({"error": "internal error"}), 500
