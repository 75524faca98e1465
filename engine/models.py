"""Tables of the generic BPMN runtime (definitions, cases, tasks, timers, history, identity)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Stores aware UTC datetimes on every backend (SQLite forgets the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


# --- identity -------------------------------------------------------------------------------


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(120), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Group(Base):
    __tablename__ = "groups"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    title: Mapped[str] = mapped_column(String(200), default="")


class Membership(Base):
    __tablename__ = "memberships"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    group_name: Mapped[str] = mapped_column(ForeignKey("groups.name", ondelete="CASCADE"), primary_key=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


# --- definitions ----------------------------------------------------------------------------


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployed_by: Mapped[str | None] = mapped_column(String(80))
    deployed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class DefinitionFile(Base):
    """A BPMN, DMN or form file exactly as deployed; content-addressed by sha256."""

    __tablename__ = "definition_files"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    name: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # bpmn | dmn | form
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class ProcessVersion(Base):
    __tablename__ = "process_versions"
    __table_args__ = (UniqueConstraint("key", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    bpmn_file_id: Mapped[int] = mapped_column(ForeignKey("definition_files.id"))
    fingerprint: Mapped[str] = mapped_column(String(64))
    # {"bpmn": [file ids], "dmn": [file ids], "forms": {filename: file id}}
    bundle: Mapped[dict[str, Any]] = mapped_column(JSON)
    deployed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


# --- cases ----------------------------------------------------------------------------------


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    process_key: Mapped[str] = mapped_column(String(255), index=True)
    process_version_id: Mapped[int] = mapped_column(ForeignKey("process_versions.id"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # SpiffWorkflow's workflow-level state (not tasks): root, correlations, subprocess shells.
    state: Mapped[str] = mapped_column(Text)
    lock_version: Mapped[int] = mapped_column(Integer, default=0)
    task_seq: Mapped[int] = mapped_column(Integer, default=0)
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    last_hash: Mapped[str] = mapped_column(String(64), default="")
    started_by: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class CaseSearch(Base):
    """A searched place of a case's data (``path`` like ``customer.phone``) and its text value;
    kept by the command that changes the data, for prefix search (migration 0009)."""

    __tablename__ = "case_search"
    __table_args__ = (Index("ix_case_search_value", "value", "case_id"),)

    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class CaseTask(Base):
    """One SpiffWorkflow task of a case, serialized alone so a command rewrites only what changed."""

    __tablename__ = "case_tasks"
    __table_args__ = (Index("ix_case_tasks_task_id", "task_id"),)

    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    workflow: Mapped[str] = mapped_column(String(36), default="")  # "" = top, else subprocess id
    state: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)


class OpenTask(Base):
    """Projection of open user tasks for inboxes; rewritten by the command that changes them."""

    __tablename__ = "open_tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    process_key: Mapped[str] = mapped_column(String(255))
    spec: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    lane: Mapped[str | None] = mapped_column(String(80))
    form: Mapped[str | None] = mapped_column(String(255))
    assignee: Mapped[str | None] = mapped_column(String(80))  # indexed where not null (0010)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    sla_policy: Mapped[str | None] = mapped_column(String(120))
    due_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)  # indexed with created_at, id (0007)
    draft: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class TaskCandidate(Base):
    __tablename__ = "task_candidates"
    __table_args__ = (Index("ix_task_candidates_group", "group_name", "task_id"),)

    task_id: Mapped[str] = mapped_column(ForeignKey("open_tasks.id", ondelete="CASCADE"), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(80), primary_key=True)


class Timer(Base):
    """A pending timer event of a case; a worker claims due rows and fires them via the engine."""

    __tablename__ = "timers"
    __table_args__ = (
        UniqueConstraint("case_id", "task_id", "due_at"),
        Index("ix_timers_due", "status", "due_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(36))
    spec: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(20))  # date | duration | cycle
    due_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | claimed | fired
    lease_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(120))
    fired_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class MessageSubscription(Base):
    __tablename__ = "message_subscriptions"

    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    message: Mapped[str] = mapped_column(String(255), index=True)


class OutboxMessage(Base):
    """Outgoing notification written in the command's transaction; a dispatcher sends it later."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_recipient", "recipient", "id"),)  # a user's notices, newest first

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="SET NULL"), index=True)
    channel: Mapped[str] = mapped_column(String(20))
    recipient: Mapped[str] = mapped_column(String(255))
    template: Mapped[str] = mapped_column(String(120), default="")
    subject: Mapped[str] = mapped_column(String(255), default="")
    body: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)  # pending|sending|sent|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    # Delivery (handlers/outbox.py, migration 0005_surveys): the idempotency key sent as
    # Message-ID, when a failed message is tried again, and the sender's lease on the row.
    message_id: Mapped[str | None] = mapped_column(String(255))
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(120))


class CaseEvent(Base):
    """History: one row per thing that happened to a case, hash-chained per case."""

    __tablename__ = "case_events"
    __table_args__ = (
        UniqueConstraint("case_id", "seq"),
        # Sealed events by position; the unsealed ones by id for the sealer (migration 0008).
        Index("ix_case_events_global_seq", "global_seq", unique=True,
              sqlite_where=text("global_seq IS NOT NULL"), postgresql_where=text("global_seq IS NOT NULL")),
        Index("ix_case_events_unsealed", "id",
              sqlite_where=text("global_seq IS NULL"), postgresql_where=text("global_seq IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(40))
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str | None] = mapped_column(String(80))
    task_id: Mapped[str | None] = mapped_column(String(36))
    task: Mapped[str | None] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # Global chain (engine/audit/chain.py): set when the event is sealed, in sealing order.
    global_seq: Mapped[int | None] = mapped_column(BigInteger)
    global_hash: Mapped[str | None] = mapped_column(String(64))


# --- audit ----------------------------------------------------------------------------------


class AuditLedger(Base):
    """Head of a global chain ("events" or "access"): the last sealed position and its hash."""

    __tablename__ = "audit_ledger"

    chain: Mapped[str] = mapped_column(String(20), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class AccessRecord(Base):
    """Who viewed unmasked personal data, exported a case, or was denied, and when."""

    __tablename__ = "access_records"
    __table_args__ = (Index("ix_access_records_actor_at", "actor", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(40), index=True)
    what: Mapped[str] = mapped_column(String(500))
    case_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    hash: Mapped[str] = mapped_column(String(64))
    global_seq: Mapped[int | None] = mapped_column(BigInteger, index=True, unique=True)
    global_hash: Mapped[str | None] = mapped_column(String(64))
