"""Satisfaction surveys (满意度调查): the ``survey.send`` handler, the customer's answer, expiry.

A survey link is ``/survey/<token>``. The token is a random id signed with the application's
secret (itsdangerous), so a forged or mistyped link is refused before the database is asked;
the database keeps only the token's sha256, so a copy of it hands out no working links.

The link expires after the ``survey.expiry`` SLA policy (7 days by default) counted from
sending. The diagrams wait on the same policy with a timer, so an unanswered survey lets the
case move on by itself; ``expire_surveys`` records it as no response (status ``expired``)
for the survey response rate. An answer reaches the waiting case as the ``survey_answered``
message with payload ``{survey_id, score, comment}``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import JSON, ForeignKey, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from engine import SYSTEM, ServiceContext
from engine.models import Base, BigId, UtcDateTime, utcnow

log = logging.getLogger("aftercare.surveys")

EXPIRY_POLICY = "survey.expiry"
DEFAULT_EXPIRY = dt.timedelta(days=7)
MESSAGE_NAME = "survey_answered"
SCORES = range(1, 6)
MAX_COMMENT = 2000
_SALT = "aftercare.survey-link"

KIND_TITLES = {
    "complaint": ("投诉处理", "complaint handling"),
    "repair": ("维修服务", "repair service"),
    "installation": ("安装服务", "installation service"),
    "inquiry": ("咨询服务", "inquiry service"),
}


class Survey(Base):
    """One survey sent to a customer about one case (table from migration 0005_surveys)."""

    __tablename__ = "surveys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="SET NULL"), index=True)
    case_ref: Mapped[str | None] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    customer_id: Mapped[str | None] = mapped_column(String(80))
    channel: Mapped[str] = mapped_column(String(20))
    recipient: Mapped[str] = mapped_column(String(255))
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="sent")  # sent | answered | expired
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    answered_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    expired_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)  # the case took the answer
    score: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)


# --- signed link tokens ---------------------------------------------------------------------

_secret: dict[str, str] = {}


def configure_signing(secret: str) -> None:
    """The application factory hands its secret key here (handlers have no app context)."""
    if not secret:
        raise ValueError("survey links need a non-empty secret key")
    _secret["key"] = secret


def signing_secret() -> str:
    key = _secret.get("key") or os.environ.get("AFTERCARE_SECRET_KEY")
    if not key:
        # Only an embedding without create_app gets here: links work within this process only.
        log.warning("no secret key configured for survey links; using a per-process key")
        key = _secret["key"] = secrets.token_urlsafe(48)
    return key


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(signing_secret(), salt=_SALT)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return str(_serializer().dumps(secrets.token_urlsafe(18)))


def verified_hash(token: str) -> str | None:
    """The stored hash of a genuine token, or None for a forged or damaged one."""
    if not token or len(token) > 200:
        return None
    try:
        _serializer().loads(token)
    except BadSignature:
        return None
    return hash_token(token)


def survey_link(token: str) -> str:
    """Absolute when ``AFTERCARE_PUBLIC_URL`` names the public site (needed for SMS and e-mail)."""
    base = os.environ.get("AFTERCARE_PUBLIC_URL", "").rstrip("/")
    return f"{base}/survey/{token}"


# --- sending (service task) -----------------------------------------------------------------


def expiry_for(session: Session, sent_at: dt.datetime) -> dt.datetime:
    """When a survey sent at ``sent_at`` expires: the ``survey.expiry`` policy, else 7 days."""
    try:
        from engine.sla import SlaService

        with session.begin_nested():  # a failed look-up must not spoil the command's transaction
            return SlaService().due(session, EXPIRY_POLICY, sent_at).due
    except Exception as exc:  # no SLA tables or no such policy: the documented default
        log.debug("survey expiry from default (%s)", exc)
        return sent_at + DEFAULT_EXPIRY


def local_time(moment: dt.datetime) -> str:
    zone = ZoneInfo(os.environ.get("AFTERCARE_TIMEZONE", "Asia/Shanghai"))
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _customer_row(session: Session, customer_id: Any) -> dict[str, str]:
    """Name, phone and e-mail of the customer record (handlers/models.py), if there is one."""
    try:
        cid = int(customer_id)
    except (TypeError, ValueError):
        return {}
    try:
        from .models import Customer

        with session.begin_nested():
            row = session.get(Customer, cid)
    except Exception as exc:  # a deployment without the customer tables
        log.debug("no customer record for survey: %s", exc)
        return {}
    if row is None:
        return {}
    return {"name": row.name or "", "phone": row.phone or "", "email": row.email or ""}


def _contact(customer: Mapping[str, Any], case_channel: Any, channel: str | None,
             recipient: str | None) -> tuple[str, str]:
    """Where the link goes: explicit parameters, else as notify.customer routes customer notices
    (e-mail when the customer wrote by e-mail, otherwise SMS to the mobile)."""
    if recipient:
        return (channel or ("email" if "@" in recipient else "sms")), recipient
    email, phone = customer.get("email"), customer.get("phone")
    wants_email = (channel or case_channel) == "email"
    if email and (wants_email or not phone):
        return "email", str(email)
    if phone:
        return "sms", str(phone)
    raise ValueError("the customer has no phone or e-mail to send the survey link to "
                     "(customer record, or customer.phone / customer.email in the case)")


def send_survey(ctx: ServiceContext, survey: str = "complaint", customer_id: Any = None, case_ref: Any = None,
                context: dict[str, Any] | None = None, channel: str | None = None,
                recipient: str | None = None) -> dict[str, Any]:
    """Service task ``survey.send``: create the survey and put the link in the outbox."""
    kind = str(survey or "general")
    case_ref = str(case_ref) if case_ref else (ctx.data.get("case_ref") or None)
    in_case = ctx.data.get("customer")
    customer = {k: v for k, v in (in_case if isinstance(in_case, dict) else {}).items() if v}
    customer.update({k: v for k, v in _customer_row(ctx.session, customer_id).items() if v})
    channel, recipient = _contact(customer, ctx.data.get("channel"), channel, recipient)
    now = ctx.now
    # A new round (after customer care) replaces an unanswered earlier link: only the newest
    # survey may answer the case's current wait; the old one counts as no response.
    ctx.session.execute(update(Survey).where(Survey.case_id == ctx.case_id, Survey.status == "sent")
                        .values(status="expired", expired_at=now))
    token = new_token()
    row = Survey(token_hash=hash_token(token), case_id=ctx.case_id, case_ref=case_ref, kind=kind,
                 customer_id=None if customer_id is None else str(customer_id), channel=channel,
                 recipient=recipient, context=dict(context or {}), status="sent", created_at=now,
                 expires_at=expiry_for(ctx.session, now))
    ctx.session.add(row)
    ctx.session.flush()
    link = survey_link(token)
    zh, en = KIND_TITLES.get(kind, ("服务", "service"))
    name = str(customer.get("name") or "")
    ref = f"（受理编号 {case_ref}）" if case_ref else ""
    ref_en = f" (case {case_ref})" if case_ref else ""
    until = local_time(row.expires_at)
    greeting = f"{name}，您好！" if name else "您好！"
    body = (f"{greeting}感谢您使用我们的{zh}{ref}。请在 {until} 前为本次服务评分（1–5 分）：{link}\n"
            f"Thank you for using our {en}{ref_en}. Please rate it (1–5) by {until}: {link}")
    ctx.notify(channel, recipient, body, subject=f"满意度调查 Satisfaction survey {case_ref or ''}".strip(),
               template=f"survey_{kind}", payload={"survey_id": row.id, "link": link, "case_ref": case_ref,
                                                   "expires_at": row.expires_at.isoformat()})
    return {"survey_id": row.id, "link": link, "expires_at": row.expires_at.isoformat()}


# --- the customer's side --------------------------------------------------------------------


@dataclass
class SurveyView:
    """What the survey page shows: ``state`` is invalid | open | answered | expired."""

    state: str
    survey_id: int | None = None
    kind: str = ""
    case_ref: str | None = None
    expires_at: dt.datetime | None = None
    score: int | None = None
    delivered: bool = False
    recorded: bool = False  # this request recorded the answer


def _view(row: Survey | None, now: dt.datetime) -> SurveyView:
    if row is None:
        return SurveyView("invalid")
    state = {"sent": "open", "answered": "answered", "expired": "expired"}.get(row.status, "invalid")
    if state == "open" and row.expires_at <= now:
        state = "expired"
    return SurveyView(state, row.id, row.kind, row.case_ref, row.expires_at, row.score, row.delivered_at is not None)


def _mark_expired(session: Session, survey_id: int, now: dt.datetime) -> None:
    session.execute(update(Survey).where(Survey.id == survey_id, Survey.status == "sent", Survey.expires_at <= now)
                    .values(status="expired", expired_at=now))


def find_survey(db: Any, token: str, now: dt.datetime | None = None) -> SurveyView:
    """The survey behind a link; a link found past its expiry is recorded as no response."""
    now = now or utcnow()
    token_hash = verified_hash(token)
    if token_hash is None:
        return SurveyView("invalid")
    with db.read() as s:
        view = _view(s.scalars(select(Survey).where(Survey.token_hash == token_hash)).first(), now)
    if view.state == "expired" and view.survey_id is not None:
        with db.write() as s:
            _mark_expired(s, view.survey_id, now)
    return view


def validate_answer(score: Any, comment: Any) -> tuple[int | None, str, list[dict[str, str]]]:
    errors: list[dict[str, str]] = []
    value: int | None = None
    if isinstance(score, int) and not isinstance(score, bool):
        value = score
    elif isinstance(score, str) and score.strip().isdigit():
        value = int(score.strip())
    if value not in SCORES:
        errors.append({"field": "score", "message": "请选择 1 到 5 分 / choose a score from 1 to 5"})
        value = None
    text = "" if comment is None else str(comment).strip()
    if len(text) > MAX_COMMENT:
        errors.append({"field": "comment",
                       "message": f"意见最多 {MAX_COMMENT} 字 / at most {MAX_COMMENT} characters"})
    return value, text, errors


def answer_survey(db: Any, engine: Any, token: str, score: int, comment: str,
                  now: dt.datetime | None = None) -> SurveyView:
    """Record the answer once, then deliver it to the waiting case as ``survey_answered``.

    The row is taken with a conditional UPDATE (status ``sent`` and not expired), so two
    submissions of the same link record one answer and send one message. If delivering the
    message fails, the answer is put back so the customer can send it again.
    """
    now = now or utcnow()
    token_hash = verified_hash(token)
    if token_hash is None:
        return SurveyView("invalid")
    with db.write() as s:
        row = s.scalars(select(Survey).where(Survey.token_hash == token_hash)).first()
        if row is None:
            return SurveyView("invalid")
        taken = s.execute(update(Survey).where(Survey.id == row.id, Survey.status == "sent", Survey.expires_at > now)
                          .values(status="answered", score=score, comment=comment or None, answered_at=now))
        if taken.rowcount != 1:
            _mark_expired(s, row.id, now)
            s.flush()
            s.refresh(row)
            return _view(row, now)
        survey_id, case_id, case_ref = row.id, row.case_id, row.case_ref
    correlation: dict[str, Any] = {"instance": case_id} if case_id is not None else {"case_ref": case_ref}
    payload = {"survey_id": survey_id, "score": score, "comment": comment}
    try:
        delivered = engine.deliver_message(MESSAGE_NAME, correlation, payload, SYSTEM)
    except Exception:
        with db.write() as s:
            s.execute(update(Survey).where(Survey.id == survey_id, Survey.status == "answered")
                      .values(status="sent", score=None, comment=None, answered_at=None))
        raise
    if delivered:
        with db.write() as s:
            s.execute(update(Survey).where(Survey.id == survey_id).values(delivered_at=now))
    else:
        log.info("survey %s answered but case %s was no longer waiting for it", survey_id, case_id or case_ref)
    with db.read() as s:
        view = _view(s.get(Survey, survey_id), now)
    view.recorded = True
    return view


def expire_surveys(db: Any, now: dt.datetime | None = None) -> int:
    """Record every unanswered survey past its expiry as no response; returns how many.

    Safe to run from several workers at once (a conditional UPDATE)."""
    now = now or utcnow()
    with db.write() as s:
        result = s.execute(update(Survey).where(Survey.status == "sent", Survey.expires_at <= now)
                           .values(status="expired", expired_at=now))
        count = int(result.rowcount or 0)
    if count:
        log.info("%d survey(s) expired unanswered", count)
    return count


def register(registry: Any) -> None:
    registry.register("survey.send", send_survey)
