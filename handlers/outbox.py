"""Delivery of the outbox: customer notices by e-mail (SMTP) and SMS (a pluggable gateway).

Commands write outbox rows in their own transaction (``ServiceContext.notify``); this
dispatcher sends them afterwards, retrying with backoff, and never sends a row twice:

1. *Claim* due rows atomically: ``pending`` (and due for an attempt) or ``sending`` with an
   expired lease become ``sending`` with a lease held by this dispatcher. PostgreSQL picks
   rows with ``FOR UPDATE SKIP LOCKED`` so concurrent dispatchers take disjoint rows; SQLite
   runs the claim inside its write lock with a conditional ``UPDATE`` per row.
2. *Send* each row while the lease is still ours (checked and extended just before sending).
3. *Mark* it ``sent``; on a temporary failure put it back to ``pending`` with the time of the
   next attempt (exponential backoff); on a permanent failure or after ``max_attempts``
   mark it ``failed``.

A dispatcher killed between claim and mark leaves the row ``sending``; when its lease runs
out another dispatcher claims it again. Whether a message that was handed over just before
such a crash (or before a dropped connection) arrived cannot be known, so every attempt of
a row carries the same idempotency key: the e-mail's ``Message-ID`` header and the SMS
gateway's client reference. A receiver (or the gateway) recognises the repeat.

Configuration: ``AFTERCARE_SMTP_HOST`` (localhost), ``AFTERCARE_SMTP_PORT`` (25),
``AFTERCARE_SMTP_FROM``, optional ``AFTERCARE_SMTP_USERNAME`` / ``AFTERCARE_SMTP_PASSWORD`` /
``AFTERCARE_SMTP_STARTTLS`` (1); ``AFTERCARE_SMS_GATEWAY`` (a registered name, default ``log``,
or ``package.module:Class``) and ``AFTERCARE_SMS_LOG`` for the demo gateway's file.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import random
import re
import smtplib
import socket
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sqlalchemy import and_, or_, select, update

from engine.models import OutboxMessage, utcnow

log = logging.getLogger("aftercare.outbox")

_EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$|^[^@\s<>]+@localhost$")
_PHONE_RE = re.compile(r"^\+?[0-9][0-9 \-]{5,19}$")


# --- errors and messages --------------------------------------------------------------------


class SendError(Exception):
    """A failed attempt. ``permanent`` ones are not retried."""

    permanent = False


class TransientSendError(SendError):
    """Try again later (server busy, connection lost, 4xx reply)."""


class PermanentSendError(SendError):
    """Retrying cannot help (bad address, 5xx reply)."""

    permanent = True


@dataclass(frozen=True)
class OutgoingMessage:
    id: int
    channel: str
    recipient: str
    subject: str
    body: str
    template: str
    message_id: str  # the idempotency key: the same on every attempt of this row
    attempt: int


class Sender(Protocol):
    """Delivers the messages of one channel; ``send`` returns the provider's id, if any."""

    def send(self, message: OutgoingMessage) -> str | None: ...

    def close(self) -> None: ...


# --- e-mail ---------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class SmtpSender:
    """E-mail over SMTP with the standard library; one connection reused within a pass."""

    def __init__(self, host: str = "localhost", port: int = 25, sender: str = "aftercare@localhost",
                 username: str | None = None, password: str | None = None, starttls: bool = False,
                 timeout: float = 30.0) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.username, self.password, self.starttls = username, password, starttls
        self.timeout = timeout
        self._conn: smtplib.SMTP | None = None

    @classmethod
    def from_env(cls) -> SmtpSender:
        return cls(host=os.environ.get("AFTERCARE_SMTP_HOST", "localhost"),
                   port=int(os.environ.get("AFTERCARE_SMTP_PORT", "25")),
                   sender=os.environ.get("AFTERCARE_SMTP_FROM", "aftercare@localhost"),
                   username=os.environ.get("AFTERCARE_SMTP_USERNAME") or None,
                   password=os.environ.get("AFTERCARE_SMTP_PASSWORD") or None,
                   starttls=_env_flag("AFTERCARE_SMTP_STARTTLS"))

    def _connection(self) -> smtplib.SMTP:
        if self._conn is None:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.starttls:
                conn.starttls()
            if self.username:
                conn.login(self.username, self.password or "")
            self._conn = conn
        return self._conn

    def build(self, message: OutgoingMessage) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = message.recipient
        mail["Subject"] = message.subject or "售后服务通知 Service notice"
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = message.message_id
        mail["X-Aftercare-Outbox-Id"] = str(message.id)
        if message.template:
            mail["X-Aftercare-Template"] = message.template
        mail.set_content(message.body or "")
        return mail

    def send(self, message: OutgoingMessage) -> str | None:
        if not _EMAIL_RE.match(message.recipient or ""):
            raise PermanentSendError(f"not an e-mail address: {message.recipient!r}")
        mail = self.build(message)
        try:
            self._connection().send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            self.close()
            codes = [code for code, _ in exc.recipients.values()]
            error = PermanentSendError if codes and all(c >= 500 for c in codes) else TransientSendError
            raise error(f"recipient refused: {exc.recipients}") from exc
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, auth ...
            self.close()
            text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            error = PermanentSendError if exc.smtp_code >= 500 else TransientSendError
            raise error(f"SMTP {exc.smtp_code} {text}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Connection lost or timed out, possibly after the server took the message: the
            # retry carries the same Message-ID.
            self.close()
            raise TransientSendError(f"SMTP connection to {self.host}:{self.port} failed: {exc}") from exc
        return message.message_id

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()


# --- SMS ------------------------------------------------------------------------------------


class SmsGateway(ABC):
    """The interface of an SMS provider. Implement ``send_sms`` (and ``from_env`` for settings)
    and register the class by name with ``@register_sms_gateway("name")``."""

    name: ClassVar[str] = ""

    @classmethod
    def from_env(cls) -> SmsGateway:
        return cls()

    @abstractmethod
    def send_sms(self, phone: str, text: str, idempotency_key: str) -> str:
        """Hand one text to the provider; return its message id. ``idempotency_key`` is the
        same on every attempt of one outbox row (pass it as the provider's client reference).
        Raise ``TransientSendError`` or ``PermanentSendError`` on failure."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (called after every dispatcher pass)."""


SMS_GATEWAYS: dict[str, type[SmsGateway]] = {}


def register_sms_gateway(name: str) -> Callable[[type[SmsGateway]], type[SmsGateway]]:
    def decorator(cls: type[SmsGateway]) -> type[SmsGateway]:
        cls.name = name
        SMS_GATEWAYS[name] = cls
        return cls

    return decorator


def sms_gateway(name: str | None = None) -> SmsGateway:
    """The gateway named by ``name`` or ``AFTERCARE_SMS_GATEWAY``: a registered name or
    ``package.module:Class``."""
    name = name or os.environ.get("AFTERCARE_SMS_GATEWAY", "log")
    cls = SMS_GATEWAYS.get(name)
    if cls is None and ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, SmsGateway)):
        raise ValueError(f"unknown SMS gateway {name!r}; registered: {', '.join(sorted(SMS_GATEWAYS))}")
    return cls.from_env()


@register_sms_gateway("log")
class LogSmsGateway(SmsGateway):
    """Demo gateway: appends each text as a JSON line to a file (and the log) instead of
    sending it. A repeated idempotency key is recognised and not written again."""

    def __init__(self, path: str | os.PathLike[str] = "instance/sms.log") -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> LogSmsGateway:
        return cls(os.environ.get("AFTERCARE_SMS_LOG", "instance/sms.log"))

    def _seen(self, key: str) -> bool:
        if not self.path.exists():
            return False
        with self.path.open(encoding="utf-8") as fh:
            return any(json.loads(line).get("key") == key for line in fh if line.strip())

    def send_sms(self, phone: str, text: str, idempotency_key: str) -> str:
        with self._lock:
            if self._seen(idempotency_key):
                log.info("SMS %s to %s was already handed over; not repeated", idempotency_key, phone)
                return idempotency_key
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = {"at": utcnow().isoformat(), "to": phone, "text": text, "key": idempotency_key}
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        log.info("SMS to %s: %s", phone, text)
        return idempotency_key


class SmsSender:
    """Adapts an ``SmsGateway`` to the dispatcher (validates the number first)."""

    def __init__(self, gateway: SmsGateway) -> None:
        self.gateway = gateway

    def send(self, message: OutgoingMessage) -> str | None:
        if not _PHONE_RE.match(message.recipient or ""):
            raise PermanentSendError(f"not a phone number: {message.recipient!r}")
        text = f"{message.subject}: {message.body}" if message.subject and not message.body else message.body
        return self.gateway.send_sms(message.recipient.replace(" ", "").replace("-", ""), text,
                                     message.message_id)

    def close(self) -> None:
        self.gateway.close()


class InAppSender:
    """Staff notices (channel ``staff``) are delivered by showing them in the staff member's
    notification list (``GET /api/notifications``); marking the row sent is the delivery."""

    def send(self, message: OutgoingMessage) -> str | None:
        if not message.recipient:
            raise PermanentSendError("a staff notice needs a username")
        return None

    def close(self) -> None:
        return None


def default_senders() -> dict[str, Sender]:
    return {"email": SmtpSender.from_env(), "sms": SmsSender(sms_gateway()), "staff": InAppSender()}


# --- the dispatcher -------------------------------------------------------------------------


@dataclass
class DispatchReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0  # lease lost before sending (another dispatcher took over)
    errors: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        return self.sent + self.retried + self.failed


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class OutboxDispatcher:
    """Claims, sends and marks outbox rows of the channels it has senders for."""

    def __init__(self, db: Any, senders: dict[str, Sender] | None = None, *, worker: str | None = None,
                 lease: dt.timedelta = dt.timedelta(minutes=5), batch: int = 50, max_attempts: int = 8,
                 retry_base: dt.timedelta = dt.timedelta(seconds=30), retry_cap: dt.timedelta = dt.timedelta(hours=1),
                 jitter: float = 0.1, domain: str | None = None) -> None:
        self.db = db
        self.senders = senders if senders is not None else default_senders()
        self.worker = worker or _worker_name()
        self.lease, self.batch, self.max_attempts = lease, batch, max_attempts
        self.retry_base, self.retry_cap, self.jitter = retry_base, retry_cap, jitter
        self.domain = domain or os.environ.get("AFTERCARE_MAIL_DOMAIN") or _mail_domain()

    # -- claim ---------------------------------------------------------------------------

    def _due(self, now: dt.datetime) -> Any:
        t = OutboxMessage
        return and_(t.channel.in_(sorted(self.senders)), or_(
            and_(t.status == "pending", or_(t.next_attempt_at.is_(None), t.next_attempt_at <= now)),
            and_(t.status == "sending", or_(t.lease_until.is_(None), t.lease_until <= now))))

    def new_message_id(self, row_id: int) -> str:
        return f"<aftercare.{row_id}.{uuid.uuid4().hex}@{self.domain}>"

    def claim(self, now: dt.datetime | None = None) -> list[OutgoingMessage]:
        """Take up to ``batch`` due rows for this dispatcher (status ``sending``, leased)."""
        now = now or utcnow()
        t = OutboxMessage
        taken: list[tuple[int, str, int]] = []
        with self.db.write() as s:
            q = select(t.id, t.message_id, t.attempts).where(self._due(now)).order_by(t.id).limit(self.batch)
            if not self.db.is_sqlite:
                q = q.with_for_update(skip_locked=True)
            for row_id, message_id, attempts in s.execute(q).all():
                key = message_id or self.new_message_id(row_id)
                # Conditional: a row another dispatcher took meanwhile no longer matches.
                done = s.execute(update(t).where(t.id == row_id, self._due(now)).values(
                    status="sending", lease_until=now + self.lease, claimed_by=self.worker,
                    attempts=t.attempts + 1, message_id=key))
                if done.rowcount == 1:
                    taken.append((row_id, key, attempts + 1))
            if not taken:
                return []
            rows = {r.id: r for r in s.scalars(select(t).where(t.id.in_([row_id for row_id, _, _ in taken])))}
            return [OutgoingMessage(row_id, rows[row_id].channel, rows[row_id].recipient, rows[row_id].subject or "",
                                    rows[row_id].body or "", rows[row_id].template or "", key, attempt)
                    for row_id, key, attempt in taken]

    def _hold_lease(self, message: OutgoingMessage, now: dt.datetime) -> bool:
        """Right before sending: is the row still ours? Extends the lease for this send."""
        t = OutboxMessage
        with self.db.write() as s:
            res = s.execute(update(t).where(t.id == message.id, t.status == "sending", t.claimed_by == self.worker,
                                            t.lease_until > now).values(lease_until=now + self.lease))
            return res.rowcount == 1

    # -- outcome -------------------------------------------------------------------------

    def backoff(self, attempt: int) -> dt.timedelta:
        delay = min(self.retry_cap, self.retry_base * (2 ** max(0, attempt - 1)))
        return delay + delay * random.uniform(0, self.jitter) if self.jitter else delay

    def _finish(self, message: OutgoingMessage, values: dict[str, Any]) -> bool:
        t = OutboxMessage
        with self.db.write() as s:
            res = s.execute(update(t).where(t.id == message.id, t.status == "sending", t.claimed_by == self.worker)
                            .values(lease_until=None, **values))
            return res.rowcount == 1

    def deliver(self, message: OutgoingMessage, now: dt.datetime | None = None, report: DispatchReport | None = None
                ) -> str:
        """Send one claimed message and record the outcome: sent | retry | failed | skipped."""
        report = report or DispatchReport()
        current = now or utcnow()
        if not self._hold_lease(message, current):
            log.warning("outbox %s: lease lost before sending; left to the dispatcher holding it", message.id)
            report.skipped += 1
            return "skipped"
        try:
            self.senders[message.channel].send(message)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the row
            permanent = isinstance(exc, SendError) and exc.permanent
            error = f"{type(exc).__name__}: {exc}"[:2000]
            if not isinstance(exc, SendError):
                log.exception("outbox %s: unexpected error from the %s sender", message.id, message.channel)
            current = now or utcnow()
            if permanent or message.attempt >= self.max_attempts:
                self._finish(message, {"status": "failed", "last_error": error})
                log.error("outbox %s (%s to %s) failed after %d attempt(s): %s", message.id, message.channel,
                          message.recipient, message.attempt, error)
                report.failed += 1
                report.errors.append(error)
                return "failed"
            retry_at = current + self.backoff(message.attempt)
            self._finish(message, {"status": "pending", "next_attempt_at": retry_at, "last_error": error})
            log.warning("outbox %s: attempt %d failed (%s); next attempt at %s", message.id, message.attempt,
                        error, retry_at.isoformat())
            report.retried += 1
            report.errors.append(error)
            return "retry"
        if not self._finish(message, {"status": "sent", "sent_at": now or utcnow(), "last_error": None}):
            log.warning("outbox %s was sent but its lease had passed to another dispatcher", message.id)
        report.sent += 1
        return "sent"

    def run_once(self, now: dt.datetime | None = None) -> DispatchReport:
        """One pass: claim due rows (repeatedly, until none are due) and deliver them."""
        report = DispatchReport()
        try:
            while True:
                claimed = self.claim(now)
                for message in claimed:
                    self.deliver(message, now, report)
                if len(claimed) < self.batch:
                    break
        finally:
            for sender in self.senders.values():
                sender.close()
        return report

    def run_forever(self, interval: float = 5.0, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        log.info("outbox dispatcher %s delivering %s every %.0f s", self.worker, ", ".join(sorted(self.senders)),
                 interval)
        while not stop.is_set():
            try:
                report = self.run_once()
                if report.handled:
                    log.info("outbox pass: %d sent, %d to retry, %d failed", report.sent, report.retried,
                             report.failed)
            except Exception:
                log.exception("outbox pass failed; trying again in %.0f s", interval)
            stop.wait(interval)


def _mail_domain() -> str:
    sender = os.environ.get("AFTERCARE_SMTP_FROM", "")
    return sender.rpartition("@")[2].strip(">") or socket.getfqdn() or "aftercare.local"
