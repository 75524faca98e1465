"""What every staff page shares: the signed-in user, who may see which page and button, and
the template filters (times in the staff's zone, SLA words, masked data)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import quote

from flask import Flask, current_app, g, redirect, request, url_for
from flask_babel import format_datetime, format_timedelta, get_timezone
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from engine import Actor, Forbidden
from engine.identity import DEPLOYERS
from engine.models import utcnow

from ..auth import SAFE_METHODS, current_actor, services
from ..case_view import case_summary, parse_time, sla_state

F = TypeVar("F", bound=Callable[..., Any])

SUPERVISORS = frozenset({"admin", "supervisor"})
AUDITORS = frozenset({"admin", "auditor"})
REPORT_READERS = frozenset({"admin", "supervisor", "auditor", "process-owner"})


# --- who may do what (pages and buttons follow these, the engine enforces them again) ---------


def may_deploy(actor: Actor | None) -> bool:
    return actor is not None and bool(actor.groups & DEPLOYERS)


def may_supervise(actor: Actor | None) -> bool:
    return actor is not None and bool(actor.groups & SUPERVISORS)


def may_audit(actor: Actor | None) -> bool:
    return actor is not None and bool(actor.groups & AUDITORS)


def may_work(actor: Actor | None) -> bool:
    """Auditors read; everyone else signed in may work tasks of their groups."""
    return actor is not None and not actor.read_only


def may_start_cases(actor: Actor | None) -> bool:
    return may_work(actor) and not (actor is not None and actor.groups <= {"staff", "process-owner"})


def may_read_reports(actor: Actor | None) -> bool:
    return actor is not None and bool(actor.groups & REPORT_READERS) and "reports" in current_app.blueprints


def require(allowed: bool) -> None:
    if not allowed:
        raise Forbidden(_("You do not have access to this page."))


# --- the signed-in user -----------------------------------------------------------------------


def staff_page(fn: F) -> F:
    """A page for signed-in staff; anyone else goes to the login page and comes back after."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        actor = current_actor(optional=True)
        if actor is None:
            target = request.full_path if request.method in SAFE_METHODS else request.path
            return redirect(url_for("auth.login", next=target.rstrip("?")))
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def actor() -> Actor:
    a = current_actor()
    assert a is not None
    return a


def nav_actor() -> Actor | None:
    """The user for the page header; public pages (no login) get None without side effects."""
    if "actor" in g:
        return g.actor
    if request.method not in SAFE_METHODS:
        return None
    try:
        return current_actor(optional=True)
    except Exception:
        return None


def back(default: str = "/") -> Response:
    from ..i18n import safe_next

    return redirect(safe_next(request.form.get("next") or request.args.get("next"), default))


# --- template helpers -------------------------------------------------------------------------


def local_time(value: Any, fmt: str = "yyyy-MM-dd HH:mm") -> str:
    when = parse_time(value)
    if when is None:
        return ""
    return format_datetime(when, fmt)


def relative_time(value: Any) -> str:
    when = parse_time(value)
    if when is None:
        return ""
    return format_timedelta(when - utcnow(), add_direction=True, threshold=1.1)


def sla_words(state: str | None) -> str:
    return {"on_time": _("On time"), "warning": _("Warning"), "breached": _("Breached"),
            "paused": _("Paused")}.get(state or "", _("No SLA"))


def status_words(status: str | None) -> str:
    return {"running": _("Running"), "waiting": _("Waiting"), "completed": _("Completed"), "error": _("Incident"),
            "cancelled": _("Cancelled"), "ready": _("Unclaimed"), "claimed": _("Claimed")}.get(status or "",
                                                                                               status or "")


def event_words(kind: str) -> str:
    words = {
        "case_started": _("Case started"), "task_opened": _("Task opened"), "task_claimed": _("Task claimed"),
        "task_unclaimed": _("Task released"), "task_assigned": _("Task assigned"),
        "task_draft_saved": _("Draft saved"), "task_completed": _("Task completed"),
        "service_task_completed": _("Automatic step done"), "decision_evaluated": _("Decision made"),
        "timer_fired": _("Timer fired"), "message_delivered": _("Message received"), "incident": _("Incident"),
        "retried": _("Retried"), "case_cancelled": _("Case cancelled"), "case_completed": _("Case completed"),
        "sla_warning": _("SLA warning"), "sla_breached": _("SLA breached"), "escalated": _("Escalated"),
        "sla_started": _("SLA clock started"), "sla_paused": _("SLA clock paused"),
        "sla_resumed": _("SLA clock resumed"), "sla_policy_missing": _("SLA policy missing"),
        "sla_due_set": _("Due time set"), "function_results": _("Results recorded for replay"),
        "engine_advanced": _("Engine step"), "task_routed": _("Task routed"),
    }
    return words.get(kind, kind.replace("_", " "))


def audit_words(word: str | None) -> str:
    """Words of verification reports and data changes (replay results, change kinds)."""
    return {"verified": _("verified"), "diverged": _("diverged"), "added": _("added"), "removed": _("removed"),
            "changed": _("changed")}.get(word or "", word or "")


def page_url(**changes: Any) -> str:
    """The current page's address with some query arguments changed (filters, pages)."""
    args = request.args.to_dict()
    for k, v in changes.items():
        if v is None or v == "":
            args.pop(k, None)
        else:
            args[k] = str(v)
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in args.items())
    return request.path + (f"?{query}" if query else "")


def process_names(processes: list[dict[str, Any]]) -> dict[str, str]:
    return {p["key"]: p["name"] for p in processes}


def is_mapping(value: Any) -> bool:
    return isinstance(value, dict)


def is_list(value: Any) -> bool:
    return isinstance(value, list)


_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


def is_time_text(value: Any) -> bool:
    """Case data keeps times as ISO text; pages show them in the staff's zone."""
    return isinstance(value, str) and bool(_ISO_TIME.match(value))


def register_template_helpers(app: Flask) -> None:
    app.jinja_env.filters.update(local_time=local_time, relative_time=relative_time, sla_words=sla_words,
                                 status_words=status_words, event_words=event_words, audit_words=audit_words)
    app.jinja_env.tests.update(mapping_value=is_mapping, list_value=is_list, time_text=is_time_text)
    # Globals, not context: imported macros (pagers, badges) see them too.
    app.jinja_env.globals.update(page_url=page_url, sla_state=sla_state, process_names=process_names,
                                 case_summary=case_summary)

    @app.context_processor
    def page_context() -> dict[str, Any]:
        who = nav_actor()
        return {
            "me": who, "may_deploy": may_deploy(who), "may_supervise": may_supervise(who),
            "may_audit": may_audit(who), "may_work": may_work(who), "may_start_cases": may_start_cases(who),
            "may_read_reports": may_read_reports(who), "timezone_name": str(get_timezone()),
        }


def engine() -> Any:
    return services().engine


def db() -> Any:
    return services().db
