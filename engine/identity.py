"""Users, groups, API tokens and the rules of who may see and do what."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from .db import Transaction
from .errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from .fastsql import Statement, parse_time
from .models import ApiToken, Group, Membership, User, utcnow

BUILTIN_GROUPS = {
    "admin": "管理员 Administrators",
    "process-owner": "流程负责人 Process owners",
    "auditor": "审计 Auditors",
    "supervisor": "主管 Supervisors",
    "staff": "员工 Staff",
}
SEE_ALL = frozenset({"admin", "supervisor", "auditor"})
DEPLOYERS = frozenset({"admin", "process-owner"})
TOKEN_LIFETIME = dt.timedelta(hours=12)
# pbkdf2 keeps logins well under a second on small machines while staying a slow hash.
PASSWORD_METHOD = "pbkdf2:sha256:260000"


@dataclass(frozen=True)
class Actor:
    """Who issues a command; ``system`` actors (timers, workers) bypass group checks."""

    username: str
    groups: frozenset[str] = field(default_factory=frozenset)
    system: bool = False

    @property
    def sees_all(self) -> bool:
        return self.system or bool(self.groups & SEE_ALL)

    @property
    def read_only(self) -> bool:
        return not self.system and "auditor" in self.groups and not self.groups & {"admin"}

    def require(self, allowed: frozenset[str] | set[str], what: str) -> None:
        if self.system or self.groups & allowed:
            return
        raise Forbidden(f"{what} requires one of the groups: {', '.join(sorted(allowed))}")

    def require_writer(self) -> None:
        if self.read_only:
            raise Forbidden("auditors have read-only access")


SYSTEM = Actor("system", frozenset({"admin"}), system=True)


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=PASSWORD_METHOD)


def ensure_groups(session: Session, names: dict[str, str]) -> None:
    existing = set(session.scalars(select(Group.name)))
    for name, title in names.items():
        if name not in existing:
            session.add(Group(name=name, title=title))
    session.flush()


def add_user(session: Session, username: str, password: str, groups: list[str], display_name: str = "") -> User:
    username = username.strip()
    if not username or len(username) > 80:
        raise InvalidInput("invalid username", [{"field": "username", "message": "1 to 80 characters"}])
    if len(password) < 8:
        raise InvalidInput("password too short", [{"field": "password", "message": "at least 8 characters"}])
    if password.strip().lower() == username.lower():
        raise InvalidInput("password equals the username",
                           [{"field": "password", "message": "must differ from the username"}])
    ensure_groups(session, BUILTIN_GROUPS)
    ensure_groups(session, {g: g for g in groups})
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username, password_hash=hash_password(password), display_name=display_name or username)
        session.add(user)
        session.flush()
    else:
        user.password_hash = hash_password(password)
        user.display_name = display_name or user.display_name
    session.execute(delete(Membership).where(Membership.user_id == user.id))
    for g in sorted({*groups, "staff"}):
        session.add(Membership(user_id=user.id, group_name=g))
    session.flush()
    return user


def groups_of(session: Session, user_id: int) -> frozenset[str]:
    return frozenset(session.scalars(select(Membership.group_name).where(Membership.user_id == user_id)))


def authenticate(session: Session, username: str, password: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active or not check_password_hash(user.password_hash, password):
        raise Unauthenticated("wrong username or password")
    return user


def issue_token(session: Session, user: User) -> str:
    token = secrets.token_urlsafe(32)
    session.add(ApiToken(token_hash=_digest(token), user_id=user.id, expires_at=utcnow() + TOKEN_LIFETIME))
    return token


# One round trip on the driver cursor: every API request pays for this lookup.
_TOKEN_ACTOR = Statement(
    "SELECT t.expires_at, u.username, u.active, m.group_name FROM api_tokens t "
    "JOIN users u ON u.id = t.user_id LEFT OUTER JOIN memberships m ON m.user_id = u.id "
    "WHERE t.token_hash = :token_hash")


def actor_for_token(session: Session | Transaction, token: str) -> Actor:
    rows = _TOKEN_ACTOR.execute(session, {"token_hash": _digest(token)}).fetchall()
    if not rows or parse_time(rows[0][0]) < utcnow():  # type: ignore[operator]
        raise Unauthenticated("invalid or expired token")
    if not rows[0][2]:
        raise Unauthenticated("unknown or disabled user")
    return Actor(rows[0][1], frozenset(r[3] for r in rows if r[3]))


def actor_for_user_id(session: Session, user_id: int) -> Actor:
    user = session.get(User, user_id)
    if user is None or not user.active:
        raise Unauthenticated("unknown or disabled user")
    return Actor(user.username, groups_of(session, user.id))


def actor_for_username(session: Session, username: str) -> Actor:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"user '{username}' not found")
    return Actor(user.username, groups_of(session, user.id))


def revoke_token(session: Session, token: str) -> None:
    session.execute(delete(ApiToken).where(ApiToken.token_hash == _digest(token)))


# Staff sign-in sessions are rows too (so sign-out ends them server-side, even for a copied cookie).
# Stored under a different digest than API tokens, so a session id is never a bearer token.
def open_session(session: Session, user_id: int) -> str:
    sid = secrets.token_urlsafe(32)
    session.add(ApiToken(token_hash=_digest("session:" + sid), user_id=user_id,
                         expires_at=utcnow() + TOKEN_LIFETIME))
    return sid


def session_alive(session: Session, user_id: int, sid: str) -> bool:
    row = session.get(ApiToken, _digest("session:" + sid))
    return row is not None and row.user_id == user_id and row.expires_at >= utcnow()


def close_session(session: Session, sid: str) -> None:
    session.execute(delete(ApiToken).where(ApiToken.token_hash == _digest("session:" + sid)))


def task_groups(lane: str | None) -> frozenset[str]:
    """A lane names the group that works its tasks; tasks outside lanes are open to all staff."""
    return frozenset({lane}) if lane else frozenset({"staff"})


def may_start(actor: Actor, starters: frozenset[str] | None) -> bool:
    """Whether ``actor`` may start a case of a process whose starter groups are ``starters``."""
    return starters is None or actor.system or "admin" in actor.groups or bool(actor.groups & starters)


def may_work_task(actor: Actor, candidate_groups: frozenset[str], assignee: str | None) -> bool:
    if actor.read_only:
        return False
    if actor.system or "admin" in actor.groups or "supervisor" in actor.groups:
        return True
    if assignee == actor.username:
        return True
    return bool(actor.groups & candidate_groups)


def may_see_task(actor: Actor, candidate_groups: frozenset[str], assignee: str | None) -> bool:
    return actor.sees_all or assignee == actor.username or bool(actor.groups & candidate_groups)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_secret_ok(token: str) -> bool:
    return 20 <= len(token) <= 200


__all__ = [
    "Actor", "SYSTEM", "BUILTIN_GROUPS", "DEPLOYERS", "add_user", "authenticate", "issue_token",
    "actor_for_token", "actor_for_user_id", "actor_for_username", "revoke_token", "task_groups",
    "may_work_task", "may_see_task", "ensure_groups", "Forbidden",
]
