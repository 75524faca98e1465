"""Sign in and out with the session cookie; failed sign-ins are throttled per name and address."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from engine import EngineError
from engine.identity import authenticate, close_session, open_session

from ..auth import check_csrf, csrf_token, current_actor, services
from ..i18n import safe_next

auth = Blueprint("auth", __name__)


@auth.route("/login", methods=["GET", "POST"])
def login() -> Response | tuple[str, int] | str:
    target = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_actor(optional=True) is not None:
            return redirect(target)
        return render_template("login.html", next=target, username="", error=None)
    check_csrf()
    username = (request.form.get("username") or "").strip()
    password = request.form.get("password") or ""
    svc = services()
    address = request.remote_addr or ""
    try:
        svc.login_throttle.check(username, address)
    except EngineError as exc:
        return render_template("login.html", next=target, username=username,
                               error=_("Too many failed sign-ins. Try again later.") + f" ({exc.message})"), 429
    try:
        with svc.db.read() as s:
            user = authenticate(s, username, password)
            user_id = user.id
    except EngineError:
        svc.login_throttle.failed(username, address)
        return render_template("login.html", next=target, username=username,
                               error=_("Wrong username or password.")), 401
    svc.login_throttle.succeeded(username, address)
    with svc.db.write() as s:
        sid = open_session(s, user_id)
    lang = session.get("lang")
    session.clear()  # a fresh session on sign-in (no fixation)
    session.permanent = True
    session["user_id"] = user_id
    session["sid"] = sid
    if lang:
        session["lang"] = lang
    csrf_token()
    return redirect(target)


@auth.post("/logout")
def logout() -> Response:
    if session.get("user_id") is not None:
        check_csrf()
        if session.get("sid"):
            with services().db.write() as s:
                close_session(s, str(session["sid"]))
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang
    return redirect(url_for("auth.login"))
