"""KPI facts: the measurable moments of each case, extracted from its history events.

Every KPI of the specification counts or averages *facts*: a case served, the first reply
to an inquiry, feedback to the customer, a repair visit (arrived on time? fixed on the first
visit?), a technician rating, a survey sent and answered, a major complaint and when it was
resolved, a spot check, a case closed (resolved or not), an SLA clock (met or breached).

The projector runs inside every command (``Runtime.event_listeners``): it reads the case's
few fact rows, applies the command's events and writes what changed, in the command's own
transaction, so facts and history never disagree. ``rebuild`` recomputes the facts of
existing cases from their recorded history with the same rules.

A fact has a period time ``at`` (when it counts), and for promises with a deadline a
``due_at``: an open fact past its deadline counts as missed without waiting for anyone.
``team`` and ``person`` say whose work the fact measures (the lane and the user of the
task that produced it).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    delete,
    insert,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine.db import Transaction
from engine.fastsql import Statement, parse_time
from engine.models import Base, BigId, Case, CaseEvent, UtcDateTime

if TYPE_CHECKING:
    from engine.db import Database
    from engine.runtime import Command
    from engine.workflow_engine import WorkflowEngine

log = logging.getLogger("aftercare.reports")

# --- the rules (from SPEC.md and the procedure diagrams) -------------------------------------

FEEDBACK_WITHIN = dt.timedelta(hours=48)  # seed 003: every issue gets feedback within 48 h
MAJOR_RESOLVED_WITHIN = dt.timedelta(hours=48)  # seed 003: major complaints resolved within 48 h
SURVEY_VALID = dt.timedelta(days=7)  # survey links expire after 7 days (used when the sender gave no expiry)

# Procedures whose cases are customers served (complaint rate, feedback, resolution rate).
SERVED = ("inquiry", "complaint", "dispatch", "installation")
# Steps whose completion is a reply or feedback to the customer, per procedure.
REPLY_STEPS: dict[str, frozenset[str]] = {
    "inquiry": frozenset({"send_auto_reply", "tell_expected_wait", "answer_inquiry", "follow_up_inquiry"}),
    "complaint": frozenset({"negotiate_solution"}),
    "dispatch": frozenset({"contact_customer"}),
    "installation": frozenset({"notify_rejection", "notify_delivery_date", "agree_delivery"}),
}
FIRST_REPLY_PROCESSES = ("inquiry",)  # consultation response time (seed 004: within 1 h)
REPAIR_PROCESS, REPAIR_VISIT, REPAIR_SIGN_OFF = "dispatch", "on_site_repair", "customer_sign_off"
COMPLAINT_PROCESS, COMPLAINT_DECISION, COMPLAINT_RESOLVED = "complaint", "complaint_priority", "implement_solution"
SPOT_CHECK_PROCESS = "spot_check"
SURVEY_HANDLER, SURVEY_MESSAGE, SURVEY_EXPIRED = "survey.send", "survey_answered", "survey_expired"
CUSTOMER_HANDLER = "customer.find_or_create"
SATISFIED_SCORE = 4  # a survey answer scoring >= 4 of 5 is satisfied (SPEC)

# Fact kinds.
SERVED_CASE, FIRST_REPLY, FEEDBACK = "served", "first_reply", "feedback"
ARRIVAL, FIRST_VISIT_FIX, RATING = "repair_arrival", "first_visit_fix", "technician_rating"
SURVEY_SENT, SURVEY_ANSWER = "survey_sent", "survey_answer"
MAJOR_COMPLAINT, SPOT_CHECK, CLOSURE, SLA = "major_complaint", "spot_check", "closure", "sla"

OPEN, PAUSED, DONE = "open", "paused", "done"

# Event types the projector reads; commands with none of them cost nothing.
RELEVANT = frozenset({
    "case_started", "task_completed", "service_task_completed", "message_delivered", "timer_fired",
    "decision_evaluated", "case_completed", "case_cancelled", "sla_started", "sla_paused", "sla_resumed",
    "sla_breached",
})


def resolved(process: str, data: dict[str, Any]) -> bool:
    """Whether a closed case of ``process`` ended with the customer's issue resolved."""
    if process == "complaint":  # closed by a supervisor with a reason, the customer still dissatisfied
        return data.get("supervisor_decision") != "close"
    if process == "inquiry":  # handed over to a complaint
        return data.get("follow_on") != "complaint"
    if process == "dispatch":
        return data.get("customer_confirmed") is not False
    if process == "installation":  # order rejected at review
        return data.get("order_valid") is not False
    return True


# --- table (migration 0006_kpi) ---------------------------------------------------------------

COVERED = ("state", "ok", "due_at", "process_key", "value", "detail")


class KpiFact(Base):
    __tablename__ = "kpi_facts"
    __table_args__ = (
        UniqueConstraint("case_id", "kind", "key", name="uq_kpi_facts_case_kind_key"),
        # Covering indexes: a year's KPIs are answered from the index alone (see bench/kpi.py).
        Index("ix_kpi_facts_kind_at", "kind", "at", *COVERED),
        Index("ix_kpi_facts_kind_person_at", "kind", "person", "at", *COVERED),
        Index("ix_kpi_facts_kind_team_at", "kind", "team", "at", *COVERED),
        Index("ix_kpi_facts_kind_customer_at", "kind", "customer", "at", "process_key", "team", "person"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    process_key: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(30))
    key: Mapped[str] = mapped_column(String(80), default="")
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    due_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    done_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(10), default=DONE)  # open | paused | done
    ok: Mapped[bool | None] = mapped_column(Boolean)
    value: Mapped[float | None] = mapped_column(Float)
    team: Mapped[str | None] = mapped_column(String(80))
    person: Mapped[str | None] = mapped_column(String(80))
    customer: Mapped[str | None] = mapped_column(String(80))
    detail: Mapped[str | None] = mapped_column(String(255))


FACTS = KpiFact.__table__


@dataclass
class Fact:
    kind: str
    key: str
    process_key: str
    at: dt.datetime
    due_at: dt.datetime | None = None
    done_at: dt.datetime | None = None
    state: str = DONE
    ok: bool | None = None
    value: float | None = None
    team: str | None = None
    person: str | None = None
    customer: str | None = None
    detail: str | None = None
    id: int | None = None
    dirty: bool = True
    deleted: bool = False

    def set(self, **changes: Any) -> None:
        for name, value in changes.items():
            if getattr(self, name) != value:
                setattr(self, name, value)
                self.dirty = True

    def close(self, when: dt.datetime, ok: bool | None, **changes: Any) -> None:
        self.set(state=DONE, done_at=when, ok=ok, **changes)

    def row(self, case_id: int) -> dict[str, Any]:
        return {"case_id": case_id, **{f: getattr(self, f) for f in _COLUMNS}}


_COLUMNS = tuple(f.name for f in fields(Fact) if f.name not in ("id", "dirty", "deleted"))


@dataclass
class CaseContext:
    """What the rules may know about the case besides the events."""

    case_id: int
    process_key: str
    created_at: dt.datetime
    started_by: str | None
    data: dict[str, Any]
    lanes: dict[str, str | None] = field(default_factory=dict)  # task id -> lane
    lane_lookup: Callable[[str], str | None] | None = None

    def lane_of(self, task_id: str | None) -> str | None:
        if not task_id:
            return None
        if task_id not in self.lanes and self.lane_lookup is not None:
            self.lanes[task_id] = self.lane_lookup(task_id)
        return self.lanes.get(task_id)


# --- the rules applied to one command's events --------------------------------------------------


def project(facts: dict[tuple[str, str], Fact], ctx: CaseContext, events: list[dict[str, Any]],
            now: dt.datetime) -> None:
    """Apply one command's events (all recorded at ``now``) to the case's facts, in place."""
    process = ctx.process_key
    for ev in events:
        if ev["type"] == "task_opened":
            ctx.lanes[str(ev.get("task_id"))] = (ev.get("payload") or {}).get("lane")
    human = next((ev for ev in events if ev["type"] == "task_completed"), None)
    who = _human(human)
    by = {"person": who, "team": ctx.lane_of(human.get("task_id")) if human else None}

    def add(fact: Fact) -> Fact:
        existing = facts.get((fact.kind, fact.key))
        if existing is not None:
            fact.id = existing.id  # recomputed by a later command (e.g. a second sign-off): last one wins
        facts[(fact.kind, fact.key)] = fact
        return fact

    def replied(step: str | None, actor: str | None, task_id: str | None) -> None:
        if step not in REPLY_STEPS.get(process, ()):
            return
        team = ctx.lane_of(task_id) if actor else None  # an automatic reply is nobody's work
        for kind in (FIRST_REPLY, FEEDBACK):
            f = facts.get((kind, ""))
            if f is not None and f.state == OPEN:
                elapsed = (now - f.at).total_seconds()
                f.close(now, f.due_at is None or now <= f.due_at, value=elapsed, person=actor, team=team)

    for ev in events:
        kind, payload = ev["type"], ev.get("payload") or {}
        task, task_id, actor = ev.get("task"), ev.get("task_id"), _human(ev)
        if kind == "case_started":
            if process in SERVED:
                add(Fact(SERVED_CASE, "", process, ctx.created_at, person=_human({"actor": ctx.started_by}),
                         customer=_customer_of(ctx.data)))
            if process in FIRST_REPLY_PROCESSES:
                add(Fact(FIRST_REPLY, "", process, ctx.created_at, state=OPEN))
            if process in REPLY_STEPS:
                add(Fact(FEEDBACK, "", process, ctx.created_at, due_at=ctx.created_at + FEEDBACK_WITHIN, state=OPEN))
        elif kind == "task_completed":
            data = payload.get("data") or {}
            served = facts.get((SERVED_CASE, ""))
            if served is not None and served.team is None:  # the team that took the case in
                served.set(team=ctx.lane_of(task_id), person=served.person or actor)
            replied(task, actor, task_id)
            if process == REPAIR_PROCESS and task == REPAIR_VISIT:
                team = ctx.lane_of(task_id)
                if isinstance(data.get("arrived_on_time"), bool):
                    add(Fact(ARRIVAL, "", process, now, ok=data["arrived_on_time"], person=actor, team=team))
                if isinstance(data.get("fixed_first_visit"), bool):
                    add(Fact(FIRST_VISIT_FIX, "", process, now, ok=data["fixed_first_visit"], person=actor,
                             team=team))
            elif process == REPAIR_PROCESS and task == REPAIR_SIGN_OFF and _number(data.get("technician_rating")):
                visit = facts.get((FIRST_VISIT_FIX, "")) or facts.get((ARRIVAL, ""))
                person = visit.person if visit is not None else _technician(ctx.data) or actor
                add(Fact(RATING, "", process, now, value=float(data["technician_rating"]), person=person,
                         team=visit.team if visit is not None else ctx.lane_of(task_id)))
            elif process == COMPLAINT_PROCESS and task == COMPLAINT_RESOLVED:
                f = facts.get((MAJOR_COMPLAINT, ""))
                if f is not None and f.state == OPEN:
                    f.close(now, f.due_at is not None and now <= f.due_at, value=(now - f.at).total_seconds(),
                            person=actor, team=ctx.lane_of(task_id))
            elif process == SPOT_CHECK_PROCESS and isinstance(data.get("compliant"), bool):
                add(Fact(SPOT_CHECK, str(task_id), str(data.get("procedure") or process), now,
                         ok=data["compliant"], person=_text(data.get("checked_staff")),
                         team=_text(data.get("checked_team")), detail=_text(data.get("checked_case_ref"))))
            sla = facts.get((SLA, str(task_id)))
            if sla is not None and sla.state != DONE:
                _close_sla(sla, now, actor)
        elif kind == "service_task_completed":
            handler, result = payload.get("handler"), payload.get("result")
            result = result if isinstance(result, dict) else {}
            if handler == CUSTOMER_HANDLER and result.get("customer_id") is not None:
                served = facts.get((SERVED_CASE, ""))
                if served is not None:
                    served.set(customer=str(result["customer_id"]))
            elif handler == SURVEY_HANDLER:
                key = str(result.get("survey_id") or task_id or "survey")
                add(Fact(SURVEY_SENT, key, process, now, due_at=_time(result.get("expires_at")) or now + SURVEY_VALID,
                         state=OPEN, detail=_text(result.get("kind")) or process, **by))
            replied(task, None, task_id)  # an automatic reply
        elif kind == "message_delivered" and payload.get("name") == SURVEY_MESSAGE:
            answer = payload.get("payload") or {}
            sent = _survey(facts, answer.get("survey_id"))
            if sent is not None:
                sent.close(now, True)
                if _number(answer.get("score")):
                    score = float(answer["score"])
                    add(Fact(SURVEY_ANSWER, sent.key, process, now, value=score, ok=score >= SATISFIED_SCORE,
                             person=sent.person, team=sent.team, detail=sent.detail))
        elif kind == "timer_fired" and task == SURVEY_EXPIRED:
            for f in facts.values():
                if f.kind == SURVEY_SENT and f.state == OPEN:
                    f.close(now, False)
        elif kind == "decision_evaluated" and process == COMPLAINT_PROCESS:
            if COMPLAINT_DECISION in str(payload.get("decision")) and _is_major(ctx.data) \
                    and (MAJOR_COMPLAINT, "") not in facts:
                add(Fact(MAJOR_COMPLAINT, "", process, ctx.created_at, due_at=ctx.created_at + MAJOR_RESOLVED_WITHIN,
                         state=OPEN))
        elif kind == "sla_started" and task_id:
            add(Fact(SLA, str(task_id), process, now, due_at=_time(payload.get("due")), state=OPEN,
                     detail=_text(payload.get("policy")), team=ctx.lane_of(task_id)))
        elif kind in ("sla_paused", "sla_resumed", "sla_breached"):
            f = facts.get((SLA, str(task_id)))
            if f is None or f.state == DONE:
                continue
            if kind == "sla_paused":
                f.set(state=PAUSED)
            elif kind == "sla_resumed":
                f.set(state=OPEN, due_at=_time(payload.get("due")) or f.due_at)
            else:
                f.set(ok=False)  # breached: stays open until the task closes
        elif kind == "case_completed":
            for f in facts.values():
                if f.kind == SLA and f.state != DONE:
                    _close_sla(f, now, who)
            if process in SERVED:
                add(Fact(CLOSURE, "", process, now, ok=resolved(process, ctx.data), **by))
        elif kind == "case_cancelled":
            # A cancelled case (a duplicate, a mistake) promised nothing: its open promises go.
            for f in facts.values():
                if f.state != DONE:
                    f.deleted = True


def _close_sla(f: Fact, now: dt.datetime, actor: str | None) -> None:
    breached = f.ok is False or (f.state == OPEN and f.due_at is not None and now > f.due_at)
    f.close(now, not breached, person=actor)


def _survey(facts: dict[tuple[str, str], Fact], survey_id: Any) -> Fact | None:
    if survey_id is not None and (SURVEY_SENT, str(survey_id)) in facts:
        return facts[(SURVEY_SENT, str(survey_id))]
    pending = [f for f in facts.values() if f.kind == SURVEY_SENT and f.state == OPEN]
    return max(pending, key=lambda f: f.at) if pending else None


def _human(ev: dict[str, Any] | None) -> str | None:
    actor = ev.get("actor") if ev else None
    return actor if isinstance(actor, str) and actor and actor != "system" else None


def _text(value: Any) -> str | None:
    return str(value)[:255] if isinstance(value, str | int) and not isinstance(value, bool) and value != "" else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _customer_of(data: dict[str, Any]) -> str | None:
    record = data.get("customer_record")
    if isinstance(record, dict) and record.get("customer_id") is not None:
        return str(record["customer_id"])
    return None


def _technician(data: dict[str, Any]) -> str | None:
    assignment = data.get("assignment")
    return _text(assignment.get("technician_id")) if isinstance(assignment, dict) else None


def _is_major(data: dict[str, Any]) -> bool:
    if data.get("is_major") is True:
        return True
    decision = data.get("complaint_priority")
    return isinstance(decision, dict) and decision.get("is_major") is True


# --- reading and writing one case's facts ------------------------------------------------------


# The command path uses plain statements (engine/fastsql.py): SQLAlchemy's statement machinery
# would cost more than the few rows a command reads and writes here.
_FIELDS = ("process_key", "kind", "key", "at", "due_at", "done_at", "state", "ok", "value", "team", "person",
           "customer", "detail")
_TIMES = ("at", "due_at", "done_at")
_LOAD = Statement(f"SELECT id, {', '.join(_FIELDS)} FROM kpi_facts WHERE case_id = :case_id")
_INSERT = Statement(f"INSERT INTO kpi_facts (case_id, {', '.join(_FIELDS)}) "
                    f"VALUES (:case_id, {', '.join(':' + f for f in _FIELDS)})", time_params=_TIMES)
_UPDATE = Statement(f"UPDATE kpi_facts SET {', '.join(f'{f} = :{f}' for f in _FIELDS)} WHERE id = :fact_id",
                    time_params=_TIMES)
_DELETE = Statement("DELETE FROM kpi_facts WHERE id = :fact_id")


def load(session: Session | Transaction, case_id: int, rows: list[Any] | None = None) -> dict[tuple[str, str], Fact]:
    """The case's facts; ``rows`` of ``_LOAD`` when they were read already (with the case's lock)."""
    out: dict[tuple[str, str], Fact] = {}
    if rows is None:
        rows = _LOAD.execute(session, {"case_id": case_id}).fetchall()
    for row in rows:
        values = dict(zip(_FIELDS, row[1:], strict=True))
        for name in _TIMES:
            values[name] = parse_time(values[name])
        if values["ok"] is not None:
            values["ok"] = bool(values["ok"])  # SQLite keeps 0/1
        f = Fact(**values, id=row[0], dirty=False)
        out[(f.kind, f.key)] = f
    return out


def save(session: Session | Transaction, case_id: int, facts: Iterable[Fact]) -> None:
    new, changed, gone = [], [], []
    for f in facts:
        if f.deleted:
            if f.id is not None:
                gone.append({"fact_id": f.id})
        elif f.id is None:
            new.append(f.row(case_id))
        elif f.dirty:
            changed.append({"fact_id": f.id, **f.row(case_id)})
    _DELETE.executemany(session, gone)
    _UPDATE.executemany(session, changed)
    _INSERT.executemany(session, new)


# --- live: a listener of the engine's one door ---------------------------------------------------


class FactProjector:
    """``Runtime.event_listeners`` entry: keeps the case's facts in the command's transaction."""

    def __call__(self, cmd: Command, events: list[dict[str, Any]]) -> None:
        if not any(ev["type"] in RELEVANT for ev in events):
            return
        from engine import spiff

        case = cmd.case
        workflow = cmd.workflow

        def lane_lookup(task_id: str) -> str | None:
            task = spiff.find_task(workflow, task_id)
            if task is None:
                return None
            try:
                return spiff.user_task_info(task).lane
            except Exception:  # not a user task
                return getattr(task.task_spec, "lane", None)

        ctx = CaseContext(case.id, case.process_key, _aware(case.created_at), case.started_by, case.data or {},
                          lane_lookup=lane_lookup)
        starting = any(ev["type"] == "case_started" for ev in events)
        facts = {} if starting else load(cmd.tx, case.id, cmd.prefetched.get(_LOAD))  # a new case has none yet
        try:
            project(facts, ctx, events, cmd.now)
        except (TypeError, ValueError, KeyError, AttributeError):
            # Odd data must not stop the service; the case can be re-projected with ``rebuild``.
            log.exception("KPI facts of case %s not updated", case.id)
            return
        save(cmd.tx, case.id, facts.values())


def install(engine: WorkflowEngine) -> FactProjector:
    """Register the projector with an engine (once)."""
    listeners = engine.runtime.event_listeners
    for existing in listeners:
        if isinstance(existing, FactProjector):
            return existing
    projector = FactProjector()
    listeners.append(projector)
    engine.runtime.prefetch.append(_LOAD)  # most commands change facts: read them with the lock
    return projector


# --- rebuild from recorded history ---------------------------------------------------------------


def _batches(events: list[dict[str, Any]]) -> Iterator[tuple[dt.datetime, list[dict[str, Any]]]]:
    """One command's events share its time: consecutive events with the same ``at``."""
    batch: list[dict[str, Any]] = []
    at: dt.datetime | None = None
    for ev in events:
        if at is not None and ev["at"] != at:
            yield at, batch
            batch = []
        at = ev["at"]
        batch.append(ev)
    if batch and at is not None:
        yield at, batch


def facts_from_history(case: Any, events: list[dict[str, Any]]) -> dict[tuple[str, str], Fact]:
    """The facts of one case recomputed from its whole history (the case's final data stands in
    for the data each command saw)."""
    ctx = CaseContext(case.id, case.process_key, _aware(case.created_at), case.started_by, case.data or {})
    for ev in events:  # lanes from the task_opened events, wherever they are
        if ev["type"] == "task_opened" and ev.get("task_id"):
            ctx.lanes[str(ev["task_id"])] = (ev.get("payload") or {}).get("lane")
    facts: dict[tuple[str, str], Fact] = {}
    for at, batch in _batches(events):
        project(facts, ctx, batch, at)
    return facts


def rebuild(db: Database, case_ids: Iterable[int] | None = None, chunk: int = 500,
            progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Recompute the facts of the given cases (all when None) from history; returns counts."""
    with db.read() as s:
        q = select(Case.id).order_by(Case.id)
        ids = list(s.scalars(q)) if case_ids is None else sorted(set(case_ids))
    totals = {"cases": 0, "events": 0, "facts": 0}
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        with db.write() as s:
            cases = {c.id: c for c in s.execute(select(Case.id, Case.process_key, Case.created_at, Case.started_by,
                                                       Case.data).where(Case.id.in_(part)))}
            per_case: dict[int, list[dict[str, Any]]] = {cid: [] for cid in cases}
            rows = s.execute(select(CaseEvent.case_id, CaseEvent.type, CaseEvent.at, CaseEvent.actor,
                                    CaseEvent.task_id, CaseEvent.task, CaseEvent.payload)
                             .where(CaseEvent.case_id.in_(part)).order_by(CaseEvent.case_id, CaseEvent.seq))
            wanted = RELEVANT | {"task_opened"}  # filtered here: a type filter in SQL steers SQLite off the case index
            for r in rows:
                if r.type not in wanted:
                    continue
                per_case[r.case_id].append({"type": r.type, "at": _aware(r.at), "actor": r.actor,
                                            "task_id": r.task_id, "task": r.task, "payload": r.payload or {}})
                totals["events"] += 1
            s.execute(delete(FACTS).where(FACTS.c.case_id.in_(part)))
            new: list[dict[str, Any]] = []
            for cid, events in per_case.items():
                try:
                    facts = facts_from_history(cases[cid], events)
                except (TypeError, ValueError, KeyError, AttributeError):
                    log.exception("KPI facts of case %s not rebuilt", cid)
                    continue
                new.extend(f.row(cid) for f in facts.values() if not f.deleted)
            if new:
                s.execute(insert(FACTS), new)
            totals["cases"] += len(cases)
            totals["facts"] += len(new)
        if progress is not None:
            progress(totals["cases"])
    return totals


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
