"""SLA policies, business calendars as data, and the SLA clocks of open user tasks.

A policy is versioned data: ``name``, ``target`` (ISO 8601 duration), ``calendar`` (``24x7``
or a stored business calendar), ``warn_ratio`` (default 0.8) and an escalation chain of
steps ``{after, action, group}`` that run ``after`` the breach. Changing a policy adds a
version; a due date is always computed from the newest version at the moment it is set,
so changes apply to timers set after the change and the history names the version used.

Timer expressions in diagrams call ``sla_due("name")`` (an ISO datetime for ``timeDate``)
or ``sla_cycle("name")`` (``R/<first>/<target>`` for ``timeCycle``). A user task carrying
``spiffworkflow:property name="slaPolicy"`` gets an SLA clock when it opens: its due date,
its warning time, and one pending ``sla`` timer row for the next checkpoint (warning,
breach, then each escalation step). The timer worker claims those rows like any other
timer and fires them through ``WorkflowEngine.fire_timer``, i.e. through the one door.

While a case waits on the customer (an open user task or a waiting catch/receive event
marked ``slaPause`` = ``true``) the clocks of its other open tasks are paused; when the
wait ends their warning and due dates move by the paused (working) time. Timers drawn in
diagrams (survey expiry, revisits) are deadlines owned by the diagram and do not pause.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from .calendars import BusinessCalendar, CalendarError, always_open, china_calendar, parse_duration
from .errors import InvalidInput, NotFound
from .identity import Actor
from .models import (
    Base,
    BigId,
    Membership,
    OpenTask,
    OutboxMessage,
    TaskCandidate,
    Timer,
    User,
    UtcDateTime,
    utcnow,
)
from .services import current_command

if TYPE_CHECKING:
    from .runtime import Command

log = logging.getLogger("aftercare.sla")

ALWAYS_OPEN = "24x7"
DEFAULT_CALENDAR = "china"
DEFAULT_WARN_RATIO = 0.8
ACTIONS = ("notify_group", "raise_priority", "reassign_group")
SLA_TIMER_KIND = "sla"
POLICY_EDITORS = frozenset({"admin", "process-owner"})
DEFAULT_POLICY_FILE = Path(__file__).resolve().parent.parent / "data" / "sla_policies.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,120}$")
_ZERO = dt.timedelta(0)


# --- tables (migration 0002_sla) ------------------------------------------------------------


class SlaPolicyRow(Base):
    """One version of one policy; the highest version of a name is the one in force."""

    __tablename__ = "sla_policies"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), index=True)
    version: Mapped[int] = mapped_column(Integer)
    target: Mapped[str] = mapped_column(String(40))
    calendar: Mapped[str] = mapped_column(String(80))
    warn_ratio: Mapped[float] = mapped_column(Float)
    escalation: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(80))
    # {"urgent": "PT12H", ...}: targets for cases of these priorities (migration 0002_sla_priority_targets)
    priority_targets: Mapped[dict[str, str] | None] = mapped_column(JSON)


class SlaCalendarRow(Base):
    """A business calendar as data (``BusinessCalendar.to_dict``), edited per year."""

    __tablename__ = "sla_calendars"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(80))


class SlaClock(Base):
    """The SLA clock of one user task: kept after the task closes for compliance reports."""

    __tablename__ = "sla_clocks"
    __table_args__ = (Index("ix_sla_clocks_case_open", "case_id", "closed_at"),)

    task_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(255))  # the task's element id in the diagram
    policy: Mapped[str] = mapped_column(String(120))
    policy_version: Mapped[int] = mapped_column(Integer)
    calendar: Mapped[str] = mapped_column(String(80))
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    warn_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    due_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    paused_since: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    paused_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    # 0 nothing yet, 1 warned, 2 breached, 2 + k: k escalation steps done
    stage: Mapped[int] = mapped_column(Integer, default=0)
    breached_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    outcome: Mapped[str | None] = mapped_column(String(20))  # met | breached, when closed


# --- policies as values ---------------------------------------------------------------------


@dataclass(frozen=True)
class EscalationStep:
    after: str  # ISO duration after the breach, on the policy's calendar
    action: str  # notify_group | raise_priority | reassign_group
    group: str | None = None
    levels: int = 1  # raise_priority only

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"after": self.after, "action": self.action}
        if self.group is not None:
            out["group"] = self.group
        if self.action == "raise_priority":
            out["levels"] = self.levels
        return out


@dataclass(frozen=True)
class SlaPolicy:
    name: str
    target: str
    calendar: str = ALWAYS_OPEN
    warn_ratio: float = DEFAULT_WARN_RATIO
    escalation: tuple[EscalationStep, ...] = ()
    description: str = ""
    version: int = 0
    created_at: dt.datetime | None = None
    created_by: str | None = None
    priority_targets: tuple[tuple[str, str], ...] = ()  # (case priority, target), sorted

    def target_for(self, priority: Any = None) -> str:
        """The target for a case of ``priority`` (its data's ``priority``), else the default."""
        return dict(self.priority_targets).get(str(priority), self.target) if priority is not None else self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "target": self.target, "calendar": self.calendar,
            "warn_ratio": self.warn_ratio, "escalation": [s.to_dict() for s in self.escalation],
            "priority_targets": dict(self.priority_targets), "description": self.description,
            "created_at": self.created_at.isoformat() if self.created_at else None, "created_by": self.created_by,
        }

    def same_rules(self, other: SlaPolicy) -> bool:
        return (self.target, self.calendar, self.warn_ratio, self.escalation, self.description,
                self.priority_targets) == (other.target, other.calendar, other.warn_ratio, other.escalation,
                                           other.description, other.priority_targets)

    @classmethod
    def from_row(cls, row: SlaPolicyRow) -> SlaPolicy:
        return cls(row.name, row.target, row.calendar, row.warn_ratio,
                   tuple(EscalationStep(**s) for s in row.escalation or []), row.description or "",
                   row.version, row.created_at, row.created_by, tuple(sorted((row.priority_targets or {}).items())))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> SlaPolicy:
        """Validate policy data from the API, the CLI or the default table; errors name the field."""
        errors: list[dict[str, str]] = []
        if not isinstance(data, Mapping):
            raise InvalidInput("an SLA policy must be a JSON object", [{"field": "(body)", "message": "object"}])
        name = name if name is not None else data.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            errors.append({"field": "name", "message": "1 to 120 letters, digits, '.', '_' or '-'"})
        target = data.get("target")
        if not _positive_duration(target):
            errors.append({"field": "target",
                           "message": "a positive ISO 8601 duration such as PT4H or P1D, at most 10 years"})
        calendar = data.get("calendar", ALWAYS_OPEN)
        if not isinstance(calendar, str) or not _NAME_RE.match(calendar):
            errors.append({"field": "calendar", "message": f"'{ALWAYS_OPEN}' or the name of a business calendar"})
        ratio = data.get("warn_ratio", DEFAULT_WARN_RATIO)
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            errors.append({"field": "warn_ratio", "message": "a number above 0 and at most 1 (0.8 = warn at 80 %)"})
        description = data.get("description", "")
        if not isinstance(description, str):
            errors.append({"field": "description", "message": "a string"})
        by_priority = data.get("priority_targets") or {}
        if not isinstance(by_priority, Mapping):
            errors.append({"field": "priority_targets", "message": 'an object such as {"urgent": "PT12H"}'})
            by_priority = {}
        for prio, duration in by_priority.items():
            if not isinstance(prio, str) or not prio or not _positive_duration(duration):
                errors.append({"field": f"priority_targets.{prio}",
                               "message": "a positive ISO 8601 duration, at most 10 years"})
        steps: list[EscalationStep] = []
        raw_steps = data.get("escalation", [])
        if not isinstance(raw_steps, list):
            errors.append({"field": "escalation", "message": "a list of steps"})
            raw_steps = []
        for i, raw in enumerate(raw_steps):
            where = f"escalation[{i}]"
            if not isinstance(raw, Mapping):
                errors.append({"field": where, "message": "a step object {after, action, group}"})
                continue
            unknown = set(raw) - {"after", "action", "group", "levels"}
            if unknown:
                errors.append({"field": where, "message": f"unknown keys: {', '.join(sorted(unknown))}"})
            after = raw.get("after", "PT0S")
            if not _duration(after):
                errors.append({"field": f"{where}.after",
                               "message": "an ISO 8601 duration after the breach, at most 10 years"})
            action = raw.get("action")
            if action not in ACTIONS:
                errors.append({"field": f"{where}.action", "message": f"one of {', '.join(ACTIONS)}"})
            group = raw.get("group")
            if action in ("notify_group", "reassign_group") and (not isinstance(group, str) or not group):
                errors.append({"field": f"{where}.group", "message": f"{action} needs a group"})
            levels = raw.get("levels", 1)
            if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 100:
                errors.append({"field": f"{where}.levels", "message": "an integer from 1 to 100"})
            if not errors:
                steps.append(EscalationStep(after, action, group if isinstance(group, str) else None,
                                            levels if action == "raise_priority" else 1))
        if errors:
            raise InvalidInput(f"invalid SLA policy {name!r}", errors)
        return cls(name, target, calendar, float(ratio), tuple(steps), description,
                   priority_targets=tuple(sorted(by_priority.items())))


# Longer targets and escalation delays than any service rule names; far longer ones would run past
# the calendar's last year when a due date is computed, failing every case that uses the policy.
MAX_DURATION_DAYS = 120 * 31  # ten years, months counted long
CALENDAR_YEARS = (1970, 2999)


def _duration(value: Any) -> bool:
    try:
        parts = parse_duration(value)
    except (ValueError, TypeError, OverflowError):
        return False
    return parts.months * 31 + parts.weeks * 7 + parts.days + parts.time.days <= MAX_DURATION_DAYS


def _positive_duration(value: Any) -> bool:
    if not _duration(value):
        return False
    parts = parse_duration(value)
    return bool(parts.months or parts.weeks or parts.days or parts.time > _ZERO)


# --- due dates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlaDue:
    """When a clock started with ``policy`` at ``start`` warns and breaches."""

    policy: SlaPolicy
    start: dt.datetime
    warn_at: dt.datetime
    due: dt.datetime
    target: str = ""
    priority: str | None = None

    def note(self) -> dict[str, Any]:
        note = {"policy": self.policy.name, "version": self.policy.version, "calendar": self.policy.calendar,
                "target": self.target or self.policy.target, "start": self.start.isoformat(),
                "warn_at": self.warn_at.isoformat(), "due": self.due.isoformat()}
        if self.priority is not None:
            note["priority"] = self.priority
        return note


def due_for(policy: SlaPolicy, start: dt.datetime, calendar: BusinessCalendar | None = None,
            priority: Any = None) -> SlaDue:
    """Due date and warning time of ``policy`` started at ``start`` for a case of ``priority``
    (calendar arithmetic: on a business calendar ``P1D`` is one working day and ``PT4H`` four
    working hours)."""
    cal = calendar or always_open()
    target = policy.target_for(priority)
    due = cal.add_duration(start, target).astimezone(dt.UTC)
    total = cal.working_time_between(start, due)
    warn = due if total <= _ZERO else cal.add_working_time(start, total * policy.warn_ratio).astimezone(dt.UTC)
    return SlaDue(policy, start.astimezone(dt.UTC), min(warn, due), due, target,
                  str(priority) if priority is not None else None)


def shift(calendar: BusinessCalendar, moment: dt.datetime, by: dt.timedelta) -> dt.datetime:
    """``moment`` moved later by ``by`` of working time (a zero shift keeps it exactly)."""
    if by <= _ZERO:
        return moment
    return calendar.add_working_time(moment, by).astimezone(dt.UTC)


def after(calendar: BusinessCalendar, moment: dt.datetime, duration: str) -> dt.datetime:
    parts = parse_duration(duration)
    if not (parts.months or parts.weeks or parts.days or parts.time):
        return moment  # "PT0S" is the breach itself, not the next working moment
    return calendar.add_duration(moment, parts).astimezone(dt.UTC)


# --- the service ----------------------------------------------------------------------------


@dataclass
class Checkpoint:
    stage: int
    at: dt.datetime
    kind: str  # warning | breach | escalation
    step: EscalationStep | None = None


@dataclass
class _CalendarCache:
    items: dict[tuple[str, int], BusinessCalendar] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class SlaService:
    """Policies, calendars and SLA clocks; also the engine's due calculator and task clock.

    Every method that changes something takes the caller's session, so it commits or rolls
    back with the command (or the API request) that called it.
    """

    def __init__(self, db: Any = None, notify_channel: str = "staff") -> None:
        self.db = db
        self.notify_channel = notify_channel
        self._calendars = _CalendarCache()

    # -- expression functions ------------------------------------------------------------

    def functions(self) -> dict[str, Callable[..., Any]]:
        return {"sla_due": self.sla_due, "sla_cycle": self.sla_cycle}

    def sla_due(self, name: str, priority: Any = None) -> str:
        """ISO datetime when policy ``name`` is due if started now (for ``timeDate`` timers);
        ``priority`` picks the policy's target for that case priority."""
        due = self._expression_due(name, "sla_due", priority)
        return due.due.isoformat()

    def sla_cycle(self, name: str, priority: Any = None) -> str:
        """``R/<first occurrence>/<target>`` repeating every ``target`` (for ``timeCycle`` timers).

        The first occurrence follows the policy's calendar; SpiffWorkflow repeats the cycle
        in elapsed time, so cycles are meant for around-the-clock policies."""
        due = self._expression_due(name, "sla_cycle", priority)
        return f"R/{due.due.isoformat()}/{due.target}"

    def _expression_due(self, name: str, function: str, priority: Any = None) -> SlaDue:
        if not isinstance(name, str):
            raise InvalidInput(f"{function}() needs a policy name", [{"field": "policy", "message": "a string"}])
        info = current_command.get()
        if info is not None:
            due = self.due(info.session, name, info.now, priority)
            info.notes.append({"type": "sla_due_set", "payload": {"function": function, **due.note()}})
            return due
        if self.db is None:  # outside a command (a timer start schedule) the service reads on its own
            raise InvalidInput(f"{function}({name!r}) was called outside a command", [])
        with self.db.read() as session:
            return self.due(session, name, utcnow(), priority)

    # -- due calculator (runtime hook) ---------------------------------------------------

    def __call__(self, policy: str, opened_at: dt.datetime, case_id: int, session: Session) -> dt.datetime | None:
        return self.due(session, policy, opened_at).due

    def due(self, session: Session, name: str, start: dt.datetime, priority: Any = None) -> SlaDue:
        policy = self.policy(session, name)
        return due_for(policy, start, self.calendar(session, policy.calendar), priority)

    # -- policies ------------------------------------------------------------------------

    def policy(self, session: Session, name: str, version: int | None = None) -> SlaPolicy:
        q = select(SlaPolicyRow).where(SlaPolicyRow.name == name)
        q = q.where(SlaPolicyRow.version == version) if version else q.order_by(SlaPolicyRow.version.desc())
        row = session.scalars(q.limit(1)).first()
        if row is None:
            raise NotFound(f"SLA policy '{name}'" + (f" version {version}" if version else "") + " not found")
        return SlaPolicy.from_row(row)

    def policies(self, session: Session) -> list[SlaPolicy]:
        latest = (select(SlaPolicyRow.name, func.max(SlaPolicyRow.version).label("v"))
                  .group_by(SlaPolicyRow.name).subquery())
        rows = session.scalars(select(SlaPolicyRow).join(
            latest, (SlaPolicyRow.name == latest.c.name) & (SlaPolicyRow.version == latest.c.v))
            .order_by(SlaPolicyRow.name))
        return [SlaPolicy.from_row(r) for r in rows]

    def versions(self, session: Session, name: str) -> list[SlaPolicy]:
        rows = list(session.scalars(select(SlaPolicyRow).where(SlaPolicyRow.name == name)
                                    .order_by(SlaPolicyRow.version)))
        if not rows:
            raise NotFound(f"SLA policy '{name}' not found")
        return [SlaPolicy.from_row(r) for r in rows]

    def set_policy(self, session: Session, data: Mapping[str, Any], actor: Actor,
                   name: str | None = None) -> tuple[SlaPolicy, bool]:
        """Add a new version when the rules differ from the one in force; (policy, changed)."""
        actor.require(POLICY_EDITORS, "changing SLA policies")
        policy = SlaPolicy.from_dict(data, name)
        if policy.calendar != ALWAYS_OPEN and session.get(SlaCalendarRow, policy.calendar) is None:
            raise InvalidInput(f"unknown calendar '{policy.calendar}'",
                               [{"field": "calendar", "message": f"'{ALWAYS_OPEN}' or one of: " + ", ".join(
                                   session.scalars(select(SlaCalendarRow.name).order_by(SlaCalendarRow.name)))}])
        current = session.scalars(select(SlaPolicyRow).where(SlaPolicyRow.name == policy.name)
                                  .order_by(SlaPolicyRow.version.desc()).limit(1).with_for_update()).first()
        if current is not None and SlaPolicy.from_row(current).same_rules(policy):
            return SlaPolicy.from_row(current), False
        row = SlaPolicyRow(name=policy.name, version=(current.version if current else 0) + 1, target=policy.target,
                           calendar=policy.calendar, warn_ratio=policy.warn_ratio,
                           escalation=[s.to_dict() for s in policy.escalation], description=policy.description,
                           created_at=utcnow(), created_by=actor.username,
                           priority_targets=dict(policy.priority_targets) or None)
        session.add(row)
        session.flush()
        return SlaPolicy.from_row(row), True

    # -- calendars -----------------------------------------------------------------------

    def calendar(self, session: Session, name: str) -> BusinessCalendar:
        if name == ALWAYS_OPEN:
            return _ALWAYS_OPEN
        version = session.scalar(select(SlaCalendarRow.version).where(SlaCalendarRow.name == name))
        if version is None:
            raise NotFound(f"calendar '{name}' not found")
        key = (name, version)
        cached = self._calendars.items.get(key)
        if cached is not None:
            return cached
        data = session.scalar(select(SlaCalendarRow.data).where(SlaCalendarRow.name == name))
        cal = BusinessCalendar.from_dict({**data, "name": name})
        with self._calendars.lock:
            self._calendars.items[key] = cal
        return cal

    def calendar_info(self, session: Session, name: str) -> dict[str, Any]:
        if name == ALWAYS_OPEN:
            return {**_ALWAYS_OPEN.to_dict(), "version": 0, "editable": False}
        row = session.get(SlaCalendarRow, name)
        if row is None:
            raise NotFound(f"calendar '{name}' not found")
        return {**self.calendar(session, name).to_dict(), "version": row.version, "editable": True,
                "updated_at": row.updated_at.isoformat() if row.updated_at else None, "updated_by": row.updated_by}

    def calendars(self, session: Session) -> list[dict[str, Any]]:
        names = [ALWAYS_OPEN, *session.scalars(select(SlaCalendarRow.name).order_by(SlaCalendarRow.name))]
        return [self.calendar_info(session, n) for n in names]

    def set_calendar(self, session: Session, name: str, data: Mapping[str, Any], actor: Actor) -> dict[str, Any]:
        """Replace a calendar (hours, timezone, every year's holidays and make-up days)."""
        actor.require(POLICY_EDITORS, "changing calendars")
        self._check_calendar_name(name)
        try:
            cal = BusinessCalendar.from_dict({**data, "name": name})
        except CalendarError as exc:
            raise InvalidInput(f"invalid calendar '{name}': {exc}", [{"field": "calendar", "message": str(exc)}]) \
                from exc
        return self._store_calendar(session, cal, actor)

    def set_calendar_year(self, session: Session, name: str, year: int, holidays: Iterable[str | dt.date],
                          makeup_days: Iterable[str | dt.date], actor: Actor) -> dict[str, Any]:
        """Replace one year's public holidays and make-up working days (调休) of a calendar."""
        actor.require(POLICY_EDITORS, "changing calendars")
        self._check_calendar_name(name)
        if not CALENDAR_YEARS[0] <= year <= CALENDAR_YEARS[1]:
            raise InvalidInput(f"invalid calendar year {year}", [{
                "field": "year", "message": f"from {CALENDAR_YEARS[0]} to {CALENDAR_YEARS[1]}"}])
        if session.get(SlaCalendarRow, name) is None:
            base = china_calendar(year, name=name) if name == DEFAULT_CALENDAR else BusinessCalendar(name=name)
        else:
            base = self.calendar(session, name)
        try:
            cal = base.with_year(year, holidays=_dates(holidays, "holidays"), makeup_days=_dates(makeup_days,
                                                                                                  "makeup_days"))
        except CalendarError as exc:
            raise InvalidInput(f"invalid calendar year {year}: {exc}", [{"field": "year", "message": str(exc)}]) \
                from exc
        return self._store_calendar(session, cal, actor)

    def _check_calendar_name(self, name: str) -> None:
        if name == ALWAYS_OPEN:
            raise InvalidInput(f"the '{ALWAYS_OPEN}' calendar is built in and cannot be changed",
                               [{"field": "name", "message": "built-in calendar"}])
        if not _NAME_RE.match(name):
            raise InvalidInput("invalid calendar name", [{"field": "name", "message": "letters, digits, . _ -"}])

    def _store_calendar(self, session: Session, cal: BusinessCalendar, actor: Actor) -> dict[str, Any]:
        row = session.get(SlaCalendarRow, cal.name, with_for_update=True)
        data = cal.to_dict()
        if row is None:
            session.add(SlaCalendarRow(name=cal.name, version=1, data=data, updated_at=utcnow(),
                                       updated_by=actor.username))
        elif row.data != data:
            row.version += 1
            row.data = data
            row.updated_at = utcnow()
            row.updated_by = actor.username
        session.flush()
        return self.calendar_info(session, cal.name)

    # -- defaults ------------------------------------------------------------------------

    def ensure_defaults(self, session: Session, path: Path | None = None, actor: Actor | None = None,
                        today: dt.date | None = None) -> list[str]:
        """Create the default calendar and every policy of the default table that is missing;
        give the default calendar this year and the next from the ``holidays`` package when it
        has no entry for them yet (years edited by hand are left alone)."""
        from .identity import SYSTEM

        actor = actor or SYSTEM
        created: list[str] = []
        year = (today or dt.datetime.now(dt.UTC).date()).year
        if session.get(SlaCalendarRow, DEFAULT_CALENDAR) is None:
            self._store_calendar(session, china_calendar([year, year + 1], name=DEFAULT_CALENDAR), actor)
            created.append(f"calendar {DEFAULT_CALENDAR}")
        else:
            cal = self.calendar(session, DEFAULT_CALENDAR)
            for y in (year, year + 1):
                if not cal.holidays_in(y) and not cal.makeup_days_in(y):
                    source = china_calendar(y)
                    cal = cal.with_year(y, holidays=source.holidays, makeup_days=source.makeup_days)
                    created.append(f"calendar {DEFAULT_CALENDAR} {y}")
            self._store_calendar(session, cal, actor)
        table = json.loads((path or DEFAULT_POLICY_FILE).read_text(encoding="utf-8"))
        existing = set(session.scalars(select(SlaPolicyRow.name).distinct()))
        for entry in table.get("policies", []):
            if entry.get("name") in existing:
                continue
            self.set_policy(session, entry, actor)
            created.append(f"policy {entry['name']}")
        return created

    # -- SLA clocks of user tasks (runtime hooks, inside the command's transaction) --------

    def task_opened(self, cmd: Command, task_id: str, spec: str,
                    policy: str) -> tuple[dt.datetime | None, dt.datetime | None]:
        """Start the clock of a task that just opened; returns (due, warn_at)."""
        from . import spiff

        session, now = cmd.session, cmd.now
        task = spiff.find_task(cmd.workflow, task_id)
        priority = task.data.get("priority") if task is not None else None
        try:
            due = self.due(session, policy, now, priority if isinstance(priority, str | int) else None)
        except NotFound as exc:  # the task still opens, without a due date, and history says why
            log.warning("case %s task %s: %s", cmd.case.id, spec, exc)
            cmd.record("sla_policy_missing", spiff.find_task(cmd.workflow, task_id), {"policy": policy},
                       actor="system")
            return None, None
        session.execute(insert(SlaClock), [{
            "task_id": task_id, "case_id": cmd.case.id, "task": spec, "policy": policy,
            "policy_version": due.policy.version, "calendar": due.policy.calendar, "started_at": now,
            "warn_at": due.warn_at, "due_at": due.due, "paused_since": None, "paused_seconds": 0.0, "stage": 0,
            "breached_at": None, "closed_at": None, "outcome": None}])
        cal = self.calendar(session, due.policy.calendar)
        self._schedule(session, cmd.case.id, task_id, self._next_checkpoint(due.policy, due.warn_at, due.due, 0, cal))
        cmd.record("sla_started", spiff.find_task(cmd.workflow, task_id), due.note(), actor="system")
        return due.due, due.warn_at

    def tasks_closed(self, cmd: Command, task_ids: list[str]) -> None:
        session, now = cmd.session, cmd.now
        clocks = list(session.scalars(select(SlaClock).where(SlaClock.task_id.in_(task_ids),
                                                             SlaClock.closed_at.is_(None))))
        for clock in clocks:
            if clock.paused_since is not None:
                clock.paused_seconds += (now - clock.paused_since).total_seconds()
                clock.paused_since = None
            clock.closed_at = now
            clock.outcome = "breached" if clock.breached_at is not None or now > clock.due_at else "met"
        if clocks:
            self._unschedule(session, cmd.case.id, [c.task_id for c in clocks])

    def tasks_saved(self, cmd: Command) -> None:
        """Pause the case's clocks while it waits on the customer; resume them when it stops."""
        from . import spiff

        waiting, exempt = customer_wait(cmd.workflow)
        live = cmd.live.open_tasks
        if not waiting and not any(i.sla_paused for i in live.values()):
            return  # nothing paused and nothing to pause: no query
        session, now = cmd.session, cmd.now
        clocks = list(session.scalars(select(SlaClock).where(SlaClock.case_id == cmd.case.id,
                                                             SlaClock.closed_at.is_(None))))
        for clock in clocks:
            info = live.get(clock.task_id)
            pause = waiting and clock.task_id not in exempt
            task = spiff.find_task(cmd.workflow, clock.task_id)
            if pause and clock.paused_since is None:
                clock.paused_since = now
                self._unschedule(session, cmd.case.id, [clock.task_id])
                cmd.record("sla_paused", task, {"policy": clock.policy, "due": clock.due_at.isoformat()},
                           actor="system")
            elif not pause and clock.paused_since is not None:
                cmd.record("sla_resumed", task, self._resume(session, clock, now), actor="system")
                session.execute(update(OpenTask).where(OpenTask.id == clock.task_id).values(due_at=clock.due_at))
            if info is not None:
                info.sla_paused = clock.paused_since is not None
                info.due_at, info.warn_at = clock.due_at, clock.warn_at

    def load_open(self, session: Session, open_tasks: Mapping[str, Any]) -> None:
        """Fill warning time and pause state of open tasks loaded from the database."""
        for clock in session.scalars(select(SlaClock).where(SlaClock.task_id.in_(list(open_tasks)))):
            info = open_tasks.get(clock.task_id)
            if info is not None:
                info.warn_at, info.sla_paused = clock.warn_at, clock.paused_since is not None

    def _resume(self, session: Session, clock: SlaClock, now: dt.datetime) -> dict[str, Any]:
        cal = self.calendar(session, clock.calendar)
        since = clock.paused_since
        assert since is not None
        paused_work = cal.working_time_between(since, now)
        clock.paused_seconds += (now - since).total_seconds()
        clock.paused_since = None
        old_due = clock.due_at
        if clock.stage < 1:
            clock.warn_at = shift(cal, clock.warn_at, paused_work)
        if clock.stage < 2:
            clock.due_at = shift(cal, clock.due_at, paused_work)
        policy = self.policy(session, clock.policy, clock.policy_version)
        self._schedule(session, clock.case_id, clock.task_id,
                       self._next_checkpoint(policy, clock.warn_at, clock.due_at, clock.stage, cal))
        return {"policy": clock.policy, "paused_for": str(now - since), "paused_working_time": str(paused_work),
                "due_before": old_due.isoformat(), "due": clock.due_at.isoformat(),
                "warn_at": clock.warn_at.isoformat()}

    def clock_view(self, session: Session, task_ids: list[str]) -> dict[str, SlaClock]:
        if not task_ids:
            return {}
        return {c.task_id: c for c in session.scalars(select(SlaClock).where(SlaClock.task_id.in_(task_ids)))}

    # -- checkpoints: fired by the worker through the one door ---------------------------

    @staticmethod
    def _next_checkpoint(policy: SlaPolicy, warn_at: dt.datetime, due: dt.datetime, stage: int,
                         cal: BusinessCalendar) -> Checkpoint | None:
        if stage == 0:
            return Checkpoint(0, warn_at, "warning")
        if stage == 1:
            return Checkpoint(1, due, "breach")
        k = stage - 2
        if k < len(policy.escalation):
            step = policy.escalation[k]
            return Checkpoint(stage, after(cal, due, step.after), "escalation", step)
        return None

    def _schedule(self, session: Session, case_id: int, task_id: str, checkpoint: Checkpoint | None) -> None:
        self._unschedule(session, case_id, [task_id])
        if checkpoint is None:
            return
        session.execute(insert(Timer), [{
            "case_id": case_id, "task_id": task_id, "spec": f"sla:{checkpoint.kind}:{checkpoint.stage}",
            "kind": SLA_TIMER_KIND, "due_at": checkpoint.at, "status": "pending", "created_at": utcnow()}])
        # Read by the worker's after-commit hook to wake up early for this checkpoint.
        session.info.setdefault("timers_scheduled", []).append(checkpoint.at)

    @staticmethod
    def _unschedule(session: Session, case_id: int, task_ids: list[str]) -> None:
        session.execute(delete(Timer).where(Timer.case_id == case_id, Timer.task_id.in_(task_ids),
                                            Timer.kind == SLA_TIMER_KIND, Timer.status != "fired"))

    def fire(self, cmd: Command, task_id: str) -> bool:
        """Run every checkpoint of the task's clock due by now (warn, breach, escalate) and
        schedule the next one. The caller has marked the checkpoint's timer row fired."""
        from . import spiff

        session, now = cmd.session, cmd.now
        clock = session.get(SlaClock, task_id)
        if clock is None or clock.closed_at is not None or clock.paused_since is not None:
            return False
        policy = self.policy(session, clock.policy, clock.policy_version)
        cal = self.calendar(session, clock.calendar)
        task = spiff.find_task(cmd.workflow, clock.task_id)
        did = False
        while True:
            point = self._next_checkpoint(policy, clock.warn_at, clock.due_at, clock.stage, cal)
            if point is None or point.at > now:
                break
            did = True
            base = {"policy": policy.name, "version": policy.version, "due": clock.due_at.isoformat()}
            if point.kind == "warning":
                cmd.record("sla_warning", task, {**base, "warn_at": clock.warn_at.isoformat()}, actor="system")
            elif point.kind == "breach":
                clock.breached_at = now
                cmd.record("sla_breached", task, base, actor="system")
            elif point.step is not None:
                payload = self._escalate(cmd, clock, point.step, policy)
                cmd.record("escalated", task, {**base, "step": point.stage - 1, **payload}, actor="system")
            clock.stage += 1
        nxt = self._next_checkpoint(policy, clock.warn_at, clock.due_at, clock.stage, cal)
        if nxt is not None:
            session.execute(insert(Timer), [{
                "case_id": clock.case_id, "task_id": clock.task_id, "spec": f"sla:{nxt.kind}:{nxt.stage}",
                "kind": SLA_TIMER_KIND, "due_at": nxt.at, "status": "pending", "created_at": now}])
            session.info.setdefault("timers_scheduled", []).append(nxt.at)
        return did

    def _escalate(self, cmd: Command, clock: SlaClock, step: EscalationStep, policy: SlaPolicy) -> dict[str, Any]:
        session = cmd.session
        info = cmd.live.open_tasks.get(clock.task_id)
        name = info.name if info is not None else clock.task
        if step.action == "notify_group":
            group = step.group or "supervisor"
            # Staff notices are per person (GET /api/notifications); a group without members
            # still gets one row, so the escalation is on record for whoever joins it.
            members = list(session.scalars(
                select(User.username).join(Membership, Membership.user_id == User.id)
                .where(Membership.group_name == group, User.active.is_(True)).order_by(User.username)))
            for recipient in members or [group]:
                session.add(OutboxMessage(
                    case_id=clock.case_id, channel=self.notify_channel, recipient=recipient,
                    template="sla_escalation", subject=f"服务时限超时 SLA breached: {name}",
                    body=(f"案件 {clock.case_id} 的任务「{name}」已超过服务时限（{policy.name}，截止 "
                          f"{clock.due_at.isoformat()}）。\nTask '{name}' of case {clock.case_id} breached "
                          f"SLA {policy.name} (due {clock.due_at.isoformat()})."),
                    payload={"case_id": clock.case_id, "task_id": clock.task_id, "task": clock.task, "group": group,
                             "policy": policy.name, "version": policy.version, "due": clock.due_at.isoformat()}))
            return {"action": step.action, "group": group, "recipients": members}
        if info is None:  # the task closed in this very command: nothing left to change
            return {"action": step.action, "skipped": "task closed"}
        if step.action == "raise_priority":
            before = info.priority or 0
            info.priority = before + step.levels
            session.execute(update(OpenTask).where(OpenTask.id == clock.task_id).values(priority=info.priority))
            return {"action": step.action, "priority_before": before, "priority": info.priority}
        # reassign_group: the task leaves its group (and its holder) for the escalation group
        group = step.group or "supervisor"
        before_groups = list(info.groups)
        session.execute(delete(TaskCandidate).where(TaskCandidate.task_id == clock.task_id))
        session.execute(insert(TaskCandidate), [{"task_id": clock.task_id, "group_name": group}])
        session.execute(update(OpenTask).where(OpenTask.id == clock.task_id).values(assignee=None))
        assignee_before, info.assignee, info.groups = info.assignee, None, (group,)
        return {"action": step.action, "group": group, "groups_before": before_groups,
                "assignee_before": assignee_before}

    # -- reports -------------------------------------------------------------------------

    def compliance(self, session: Session, since: dt.datetime | None = None,
                   until: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Per policy: closed clocks, met, breached and the met share (for the SLA KPI)."""
        q = select(SlaClock.policy, SlaClock.outcome, func.count()).where(SlaClock.closed_at.is_not(None))
        if since is not None:
            q = q.where(SlaClock.closed_at >= since)
        if until is not None:
            q = q.where(SlaClock.closed_at < until)
        counts: dict[str, dict[str, int]] = {}
        for policy, outcome, n in session.execute(q.group_by(SlaClock.policy, SlaClock.outcome)):
            counts.setdefault(policy, {"met": 0, "breached": 0})[outcome or "met"] += n
        return [{"policy": p, "due": c["met"] + c["breached"], "met": c["met"], "breached": c["breached"],
                 "rate": c["met"] / (c["met"] + c["breached"])} for p, c in sorted(counts.items())]


_ALWAYS_OPEN = always_open()


PAUSE_VALUES = frozenset({"true", "yes", "1"})


def customer_wait(wf: Any) -> tuple[bool, set[str]]:
    """Whether the case waits on the customer, and the open tasks that are that wait (their
    own clocks keep running: the wait is what they measure)."""
    from . import spiff

    pausing = {str(t.id) for t in spiff.open_user_tasks(wf)
               if str(spiff.spec_properties(t.task_spec).get("slaPause", "")).lower() in PAUSE_VALUES}
    waiting = bool(pausing)
    if not waiting:
        for t in wf.event_manager.tasks.values():
            if str(spiff.spec_properties(t.task_spec).get("slaPause", "")).lower() in PAUSE_VALUES:
                waiting = True
                break
    return waiting, pausing


def _dates(values: Iterable[str | dt.date], field_name: str) -> list[dt.date]:
    out = []
    for v in values:
        try:
            out.append(v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v)))
        except ValueError:
            raise InvalidInput(f"invalid date {v!r}", [{"field": field_name, "message": f"{v!r} is not YYYY-MM-DD"}]) \
                from None
    return out
