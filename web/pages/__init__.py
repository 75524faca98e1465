"""Staff pages: one blueprint per area, sharing the layout, the login session and the rules of
who sees which page and button (``web/pages/common.py``)."""

from __future__ import annotations

from typing import Any

from flask import Flask, render_template

from .common import register_template_helpers


def error_page(status: int, message: str, errors: list[dict[str, Any]]) -> str:
    return render_template("error.html", status=status, message=message, errors=errors)


def register_pages(app: Flask) -> None:
    from .audit import audit
    from .auth_pages import auth
    from .board import board
    from .cases import cases
    from .inbox import inbox
    from .processes import processes
    from .sla import sla
    from .tasks import tasks
    from .timetravel import timetravel

    for bp in (auth, inbox, tasks, cases, processes, sla, board, audit, timetravel):
        app.register_blueprint(bp)
    register_template_helpers(app)
    app.extensions["aftercare"].error_page = error_page
