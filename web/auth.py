"""Who is calling: a bearer token (REST clients) or the login session (staff pages, with a CSRF
token on every state-changing request)."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, request, session

from engine import Actor, Forbidden, Unauthenticated
from engine.identity import actor_for_token, actor_for_user_id, session_alive

F = TypeVar("F", bound=Callable[..., Any])
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def services() -> Any:
    return current_app.extensions["aftercare"]


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return str(token)


def check_csrf() -> None:
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(str(sent), str(expected)):
        raise Forbidden("missing or wrong CSRF token")


def current_actor(optional: bool = False) -> Actor | None:
    if "actor" in g:
        # an earlier optional look-up (e.g. the read-only guard) may have found nobody
        if g.actor is None and not optional:
            raise Unauthenticated("authentication required: send 'Authorization: Bearer <token>'")
        return g.actor
    actor: Actor | None = None
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        with services().db.query() as tx:
            actor = actor_for_token(tx, header[7:].strip())
    elif session.get("user_id") is not None:
        with services().db.read() as s:
            try:
                sid = session.get("sid")
                # A signed-out session id is gone from the database: a copied cookie stops working.
                # A cookie without one (signed by hand, or from before sessions had ids) is refused.
                if sid is None or not session_alive(s, int(session["user_id"]), str(sid)):
                    raise Unauthenticated("session ended")
                actor = actor_for_user_id(s, int(session["user_id"]))
            except Unauthenticated:
                session.clear()
                actor = None
        if actor is not None and request.method not in SAFE_METHODS:
            check_csrf()
    if actor is None and not optional:
        raise Unauthenticated("authentication required: send 'Authorization: Bearer <token>'")
    g.actor = actor
    return actor


def login_required(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        current_actor()
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
