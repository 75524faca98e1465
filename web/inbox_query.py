"""The staff inbox: open tasks with filters, search and pages, in a fixed number of queries.

With 100,000 open tasks a page costs one indexed query for the rows (the case summary
fields come from the same join) and one for their candidate groups; searching by case
reference, customer name or phone is one range over ``case_search``'s value index
(migration ``0009_case_search``; the engine keeps those rows as case data changes).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, literal_column, or_, select
from sqlalchemy.orm import Session

from engine import Actor
from engine.models import Case, CaseSearch, OpenTask, TaskCandidate, utcnow
from engine.sla import SlaClock

from .case_view import sla_state_of

SEARCHED_KEYS = ("case_ref", "customer_name", "customer_phone")
# Where each searched value lives in case data: flat keys (intake) or the procedures' nested ones
# (``reference`` from case.assign_reference, ``customer`` from the register forms).
SEARCH_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "case_ref": (("case_ref",), ("reference", "case_ref")),
    "customer_name": (("customer_name",), ("customer", "name")),
    "customer_phone": (("customer_phone",), ("customer", "phone")),
}
SCOPES = ("mine", "group", "all")
STATES = ("ready", "claimed", "breached")
PAGE_SIZE = 50
_KEY = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass
class InboxFilter:
    scope: str = "all"
    process: str | None = None
    priority: int | None = None
    state: str | None = None
    search: str | None = None
    page: int = 1
    page_size: int = PAGE_SIZE


@dataclass
class InboxPage:
    tasks: list[dict[str, Any]]
    page: int
    has_more: bool
    counts: dict[str, int] = field(default_factory=dict)


def searched_paths() -> list[tuple[str, ...]]:
    """Every place of case data the search looks in (the engine keeps them in case_search)."""
    return [p for key in SEARCHED_KEYS for p in SEARCH_PATHS[key]]


def data_field(dialect: str, path: str | tuple[str, ...]) -> ColumnElement[Any]:
    """``cases.data`` at ``path`` as text (for showing it; searching goes through ``case_search``)."""
    keys = (path,) if isinstance(path, str) else path
    if not all(_KEY.match(k) for k in keys):
        raise ValueError(f"not a searchable key: {path}")
    if dialect == "postgresql":
        head = "".join(f"->'{k}'" for k in keys[:-1])
        return literal_column(f"(cases.data{head}->>'{keys[-1]}')")
    return literal_column(f"json_extract(cases.data, '$.{'.'.join(keys)}')")


def summary_field(dialect: str, key: str) -> ColumnElement[Any]:
    """The first of the places a searched value may live (for showing it)."""
    return func.coalesce(*[data_field(dialect, p) for p in SEARCH_PATHS[key]])


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_condition(session: Session, text: str, case_id: Any = None) -> ColumnElement[bool]:
    """``case_id`` (default ``cases.id``) is a case whose searched data starts with ``text``, or
    whose number is ``text``."""
    column = Case.id if case_id is None else case_id
    # Every searched place's text is a row of case_search (engine/search.py): one index range.
    value = CaseSearch.value
    if session.get_bind().dialect.name == "postgresql":
        match = value.like(_escape_like(text) + "%", escape="\\")
    else:
        # Binary collation: every string starting with ``text`` sorts in [text, text + U+10FFFF).
        match = and_(value >= text, value < text + "\U0010ffff")
    number = int(text) if text.isdigit() and len(text) < 18 else None
    # A few matching cases (the usual search): their ids, so the page is an index lookup by
    # case. Many (a short prefix): a test per row, so walking the page's order stops early.
    ids = set(session.scalars(select(CaseSearch.case_id).where(match).limit(WALK_FROM + 1)))
    if len(ids) <= WALK_FROM:
        if number is not None:
            ids.add(number)
        return column.in_(sorted(ids)) if ids else false()
    per_row = exists(select(CaseSearch.case_id).where(CaseSearch.case_id == column, match))
    return or_(per_row, column == number) if number is not None else per_row


def _visible(actor: Actor, scope: str, walk: bool) -> ColumnElement[bool] | None:
    """Which open tasks the actor's tab shows.

    ``walk`` spells the group test as a correlated EXISTS so the database can walk the due-time
    index and stop after one page (many visible tasks); otherwise as IN over the group's
    candidate rows, so a small set is fetched by index and sorted.
    """
    mine = OpenTask.assignee == actor.username
    if walk:
        in_groups: ColumnElement[bool] = exists(select(TaskCandidate.task_id).where(
            TaskCandidate.task_id == OpenTask.id, TaskCandidate.group_name.in_(actor.groups)))
    else:
        in_groups = OpenTask.id.in_(select(TaskCandidate.task_id).where(TaskCandidate.group_name.in_(actor.groups)))
    if scope == "mine":
        return mine
    if scope == "group":
        return in_groups
    return None if actor.sees_all else or_(mine, in_groups)


WALK_FROM = 2000  # visible tasks from which walking the due-time index beats fetching and sorting


def inbox(session: Session, actor: Actor, f: InboxFilter, now: dt.datetime | None = None,
          counts: dict[str, int] | None = None) -> InboxPage:
    dialect = session.get_bind().dialect.name
    now = now or utcnow()
    scope = f.scope if f.scope in SCOPES else "all"
    text = (f.search or "").strip()
    counts = counts if counts is not None else scope_counts(session, actor)
    walk = bool(text) or counts.get(scope, counts.get("group", 0) + counts.get("mine", 0)) >= WALK_FROM
    summary = [summary_field(dialect, k).label(k) for k in SEARCHED_KEYS]
    # The SLA clock (one row per timed task, by primary key) knows the warning time and pauses.
    q = (select(OpenTask, Case.status, SlaClock.warn_at, SlaClock.paused_since, *summary)
         .join(Case, Case.id == OpenTask.case_id).outerjoin(SlaClock, SlaClock.task_id == OpenTask.id))
    visible = _visible(actor, scope, walk)
    if visible is not None:
        q = q.where(visible)
    if f.process:
        q = q.where(OpenTask.process_key == f.process)
    if f.priority is not None:
        q = q.where(OpenTask.priority == f.priority)
    if f.state == "ready":
        q = q.where(OpenTask.assignee.is_(None))
    elif f.state == "claimed":
        q = q.where(OpenTask.assignee.is_not(None))
    elif f.state == "breached":
        q = q.where(OpenTask.due_at < now)
    if text:
        q = q.where(search_condition(session, text, OpenTask.case_id))
    page = max(1, f.page)
    size = max(1, min(f.page_size, 200))
    offset = (page - 1) * size
    # Tasks with a due time first, soonest first; then the rest, oldest first. Two index-ordered
    # queries instead of ORDER BY "due_at IS NULL", which no index can serve.
    with_due = q.where(OpenTask.due_at.is_not(None)).order_by(OpenTask.due_at, OpenTask.created_at, OpenTask.id)
    rows = list(session.execute(with_due.limit(size + 1).offset(offset)).all())
    if len(rows) <= size and f.state != "breached":
        if rows:
            rest_offset = 0
        else:
            total_due = session.scalar(select(func.count()).select_from(with_due.order_by(None).subquery())) or 0
            rest_offset = max(0, offset - total_due)
        no_due = q.where(OpenTask.due_at.is_(None)).order_by(OpenTask.created_at, OpenTask.id)
        rows += session.execute(no_due.limit(size + 1 - len(rows)).offset(rest_offset)).all()
    has_more = len(rows) > size
    rows = rows[:size]
    groups: dict[str, list[str]] = {}
    if rows:
        for tid, g in session.execute(select(TaskCandidate.task_id, TaskCandidate.group_name)
                                      .where(TaskCandidate.task_id.in_([r[0].id for r in rows]))):
            groups.setdefault(tid, []).append(g)
    tasks = []
    for row in rows:
        t: OpenTask = row[0]
        tasks.append({
            "id": t.id, "instance": t.case_id, "process": t.process_key, "name": t.name, "spec": t.spec,
            "lane": t.lane, "candidate_groups": sorted(groups.get(t.id, [])), "assignee": t.assignee,
            "state": "claimed" if t.assignee else "ready", "due": t.due_at.isoformat() if t.due_at else None,
            "created_at": t.created_at.isoformat(), "form_name": t.form, "priority": t.priority,
            "sla_policy": t.sla_policy, "case_status": row[1],
            "warn_at": row[2].isoformat() if row[2] else None,
            "sla_state": sla_state_of(t.due_at, row[2], row[3] is not None, t.created_at, now),
            "case": {k: row[4 + i] for i, k in enumerate(SEARCHED_KEYS)},
        })
    return InboxPage(tasks=tasks, page=page, has_more=has_more, counts=counts)


def scope_counts(session: Session, actor: Actor) -> dict[str, int]:
    """Open tasks per inbox tab (each an index-only count)."""
    counts = {"mine": session.scalar(select(func.count()).select_from(OpenTask)
                                     .where(OpenTask.assignee == actor.username)) or 0}
    # A task has one candidate group per lane, so counting rows counts tasks.
    counts["group"] = session.scalar(select(func.count()).select_from(TaskCandidate)
                                     .where(TaskCandidate.group_name.in_(actor.groups))) or 0
    if actor.sees_all:
        counts["all"] = session.scalar(select(func.count()).select_from(OpenTask)) or 0
    return counts


__all__ = ["InboxFilter", "InboxPage", "inbox", "scope_counts", "data_field", "summary_field", "search_condition",
           "SEARCHED_KEYS", "SEARCH_PATHS"]
