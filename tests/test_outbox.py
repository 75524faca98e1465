"""The outbox dispatcher: e-mail to a real local SMTP server, SMS through a gateway class,
retries with backoff, and each message delivered once even with two dispatchers at work."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select

from engine import Database
from engine.models import OutboxMessage, utcnow
from handlers.outbox import (
    SMS_GATEWAYS,
    LogSmsGateway,
    OutboxDispatcher,
    OutgoingMessage,
    SmsGateway,
    SmsSender,
    SmtpSender,
    TransientSendError,
    register_sms_gateway,
    sms_gateway,
)

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


# --- a real SMTP server -----------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler: keeps what it accepted; ``refuse`` holds replies to give instead."""

    def __init__(self) -> None:
        self.accepted: list[email.message.EmailMessage] = []
        self.refused_ids: list[str] = []
        self.refuse: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.lock:
            if self.refuse:
                self.refused_ids.append(str(msg["Message-ID"]))
                return self.refuse.pop(0)
            self.accepted.append(msg)  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


class RecordingGateway(SmsGateway):
    """A test SMS provider: remembers what it was handed."""

    sent: list[tuple[str, str, str]] = []

    def send_sms(self, phone: str, text: str, idempotency_key: str) -> str:
        self.sent.append((phone, text, idempotency_key))
        return f"rec-{len(self.sent)}"


register_sms_gateway("test-recorder")(RecordingGateway)


def _add(db: Database, *rows: dict[str, Any]) -> list[int]:
    with db.write() as s:
        objs = [OutboxMessage(**{"template": "", "subject": "", "payload": {}, **r}) for r in rows]
        s.add_all(objs)
        s.flush()
        return [o.id for o in objs]


def _row(db: Database, row_id: int) -> OutboxMessage:
    with db.read() as s:
        row = s.get(OutboxMessage, row_id)
        assert row is not None
        return row


def _dispatcher(db: Database, port: int, **kw: Any) -> OutboxDispatcher:
    kw.setdefault("jitter", 0.0)
    return OutboxDispatcher(db, {"email": SmtpSender("127.0.0.1", port, "service@aftercare.test", timeout=10)},
                            domain="aftercare.test", **kw)


# --- tests ------------------------------------------------------------------------------------


def test_email_reaches_a_real_smtp_server_with_its_idempotency_key(db: Database, mailbox: tuple[Mailbox, int]) -> None:
    box, port = mailbox
    [row_id] = _add(db, {"channel": "email", "recipient": "li.na@example.com", "subject": "满意度调查 Survey CMP-1",
                         "body": "请为本次服务评分 Please rate our service", "template": "survey_complaint"})

    report = _dispatcher(db, port).run_once()

    assert (report.sent, report.retried, report.failed) == (1, 0, 0)
    assert len(box.accepted) == 1
    mail = box.accepted[0]
    row = _row(db, row_id)
    assert row.status == "sent" and row.sent_at is not None and row.attempts == 1 and row.lease_until is None
    assert mail["Message-ID"] == row.message_id and row.message_id.endswith("@aftercare.test>")
    assert mail["To"] == "li.na@example.com" and mail["From"] == "service@aftercare.test"
    assert str(mail["Subject"]) == "满意度调查 Survey CMP-1"
    assert mail["X-Aftercare-Outbox-Id"] == str(row_id)
    assert "请为本次服务评分" in mail.get_content()
    # A second pass finds nothing to send.
    assert _dispatcher(db, port).run_once().handled == 0
    assert len(box.accepted) == 1


def test_sms_goes_through_a_gateway_registered_by_name(db: Database) -> None:
    RecordingGateway.sent.clear()
    [row_id, _staff] = _add(db, {"channel": "sms", "recipient": "138 0013 8000",
                                 "body": "您的维修单已受理 Repair received"},
                            {"channel": "staff", "recipient": "supervisor", "body": "not ours to deliver"})
    gateway = sms_gateway("test-recorder")
    assert isinstance(gateway, RecordingGateway) and SMS_GATEWAYS["test-recorder"] is RecordingGateway

    report = OutboxDispatcher(db, {"sms": SmsSender(gateway)}).run_once()

    assert report.sent == 1
    row = _row(db, row_id)
    assert RecordingGateway.sent == [("13800138000", "您的维修单已受理 Repair received", row.message_id)]
    assert row.status == "sent"
    with db.read() as s:  # channels without a sender stay in the outbox for whoever handles them
        assert s.scalar(select(OutboxMessage.status).where(OutboxMessage.channel == "staff")) == "pending"


def test_log_gateway_writes_each_text_once_per_idempotency_key(tmp_path: Path) -> None:
    gateway = LogSmsGateway(tmp_path / "sms.log")
    gateway.send_sms("13800138000", "第一条 first", "<key-1@x>")
    gateway.send_sms("13800138000", "第一条 first", "<key-1@x>")  # a retry after an ambiguous failure
    gateway.send_sms("13900139000", "第二条 second", "<key-2@x>")
    lines = [json.loads(line) for line in (tmp_path / "sms.log").read_text(encoding="utf-8").splitlines()]
    assert [(ln["to"], ln["text"], ln["key"]) for ln in lines] == [
        ("13800138000", "第一条 first", "<key-1@x>"), ("13900139000", "第二条 second", "<key-2@x>")]


def test_a_451_reply_is_retried_after_backoff_and_delivered_once(db: Database, mailbox: tuple[Mailbox, int]) -> None:
    box, port = mailbox
    box.refuse = ["451 4.3.0 Mailbox busy, try again later"]
    [row_id] = _add(db, {"channel": "email", "recipient": "wang@example.com", "subject": "回访 Follow-up",
                         "body": "安装回访 installation follow-up"})
    dispatcher = _dispatcher(db, port, retry_base=dt.timedelta(seconds=30))

    first = dispatcher.run_once(now=T0)
    row = _row(db, row_id)
    assert (first.sent, first.retried) == (0, 1)
    assert row.status == "pending" and row.attempts == 1 and "451" in (row.last_error or "")
    assert row.next_attempt_at == T0 + dt.timedelta(seconds=30)
    assert box.accepted == []

    assert dispatcher.run_once(now=T0 + dt.timedelta(seconds=29)).handled == 0  # not due yet
    second = dispatcher.run_once(now=T0 + dt.timedelta(seconds=30))

    assert second.sent == 1
    row = _row(db, row_id)
    assert row.status == "sent" and row.attempts == 2
    assert len(box.accepted) == 1
    # Both attempts carried the same Message-ID: a receiver can tell a repeat.
    assert box.refused_ids == [row.message_id] and box.accepted[0]["Message-ID"] == row.message_id


def test_backoff_grows_and_a_permanent_refusal_is_not_retried(db: Database, mailbox: tuple[Mailbox, int]) -> None:
    box, port = mailbox
    dispatcher = _dispatcher(db, port, retry_base=dt.timedelta(seconds=30), retry_cap=dt.timedelta(minutes=10))
    assert [dispatcher.backoff(n).total_seconds() for n in (1, 2, 3, 6)] == [30, 60, 120, 600]

    box.refuse = ["550 5.1.1 No such user here"]
    [bad, malformed] = _add(db, {"channel": "email", "recipient": "nobody@example.com", "body": "x"},
                            {"channel": "email", "recipient": "not-an-address", "body": "x"})
    report = dispatcher.run_once(now=T0)
    assert report.failed == 2 and report.retried == 0
    assert _row(db, bad).status == "failed" and "550" in (_row(db, bad).last_error or "")
    assert _row(db, malformed).status == "failed"
    assert dispatcher.run_once(now=T0 + dt.timedelta(days=1)).handled == 0
    assert box.accepted == []


def test_gives_up_after_max_attempts(db: Database, mailbox: tuple[Mailbox, int]) -> None:
    box, port = mailbox
    box.refuse = ["421 4.7.0 Try later"] * 5
    [row_id] = _add(db, {"channel": "email", "recipient": "zhao@example.com", "body": "x"})
    dispatcher = _dispatcher(db, port, max_attempts=3, retry_base=dt.timedelta(seconds=1))
    for minute in range(5):
        dispatcher.run_once(now=T0 + dt.timedelta(minutes=minute))
    row = _row(db, row_id)
    assert row.status == "failed" and row.attempts == 3
    assert box.accepted == []


def test_a_crashed_senders_lease_expires_and_the_row_is_sent_once(db: Database, mailbox: tuple[Mailbox, int]) -> None:
    box, port = mailbox
    [row_id] = _add(db, {"channel": "email", "recipient": "chen@example.com", "body": "派工通知 dispatch notice"})
    lease = dt.timedelta(minutes=5)
    crashed = _dispatcher(db, port, worker="crashed", lease=lease)
    [claimed] = crashed.claim(now=T0)  # ... and the process dies before sending
    assert _row(db, row_id).status == "sending"

    survivor = _dispatcher(db, port, worker="survivor", lease=lease)
    assert survivor.run_once(now=T0 + dt.timedelta(minutes=4)).handled == 0  # lease still held
    assert survivor.run_once(now=T0 + lease + dt.timedelta(seconds=1)).sent == 1

    row = _row(db, row_id)
    assert row.status == "sent" and row.attempts == 2 and row.claimed_by == "survivor"
    assert row.message_id == claimed.message_id  # the retry keeps the idempotency key
    assert [m["Message-ID"] for m in box.accepted] == [claimed.message_id]
    # The crashed dispatcher, coming back late, cannot send the row again.
    assert crashed.deliver(claimed, now=T0 + lease + dt.timedelta(seconds=2)) == "skipped"
    assert len(box.accepted) == 1


def test_an_ambiguous_failure_is_retried_with_the_same_key(db: Database) -> None:
    """A connection lost after the provider took the message: the retry says it is a repeat."""
    handed_over: list[str] = []

    class DropsTheFirstReply:
        def send(self, message: OutgoingMessage) -> str | None:
            handed_over.append(message.message_id)
            if len(handed_over) == 1:
                raise TransientSendError("connection reset after DATA")
            return message.message_id

        def close(self) -> None:
            pass

    [row_id] = _add(db, {"channel": "sms", "recipient": "13800138000", "body": "x"})
    dispatcher = OutboxDispatcher(db, {"sms": DropsTheFirstReply()}, retry_base=dt.timedelta(seconds=10), jitter=0)
    dispatcher.run_once(now=T0)
    dispatcher.run_once(now=T0 + dt.timedelta(seconds=10))
    assert _row(db, row_id).status == "sent"
    assert len(handed_over) == 2 and handed_over[0] == handed_over[1] == _row(db, row_id).message_id


def test_two_dispatchers_at_once_deliver_each_message_exactly_once(db_url: str, db: Database,
                                                                   mailbox: tuple[Mailbox, int]) -> None:
    box, port = mailbox
    total = 60
    ids = _add(db, *({"channel": "email", "recipient": f"customer{i}@example.com", "subject": f"通知 {i}",
                      "body": f"message {i}"} for i in range(total)))
    databases = [Database(db_url), Database(db_url)]
    reports: dict[str, Any] = {}
    start = threading.Barrier(2)

    def work(name: str, database: Database) -> None:
        dispatcher = _dispatcher(database, port, worker=name, batch=7)
        start.wait()
        reports[name] = dispatcher.run_once()

    threads = [threading.Thread(target=work, args=(f"dispatcher-{n}", d)) for n, d in enumerate(databases)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for d in databases:
            d.dispose()

    assert sum(r.sent for r in reports.values()) == total
    assert all(r.sent > 0 for r in reports.values()), "both dispatchers should have taken a share"
    received = sorted(int(m["X-Aftercare-Outbox-Id"]) for m in box.accepted)
    assert received == sorted(ids), "every message arrived exactly once"
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.status == "sent", OutboxMessage.attempts == 1)) == total


def test_claim_is_atomic_between_dispatchers(db: Database) -> None:
    _add(db, *({"channel": "sms", "recipient": "13800138000", "body": str(i)} for i in range(5)))
    a = OutboxDispatcher(db, {"sms": SmsSender(RecordingGateway())}, worker="a", batch=3)
    b = OutboxDispatcher(db, {"sms": SmsSender(RecordingGateway())}, worker="b", batch=10)
    now = utcnow()
    first, second = a.claim(now), b.claim(now)
    assert len(first) == 3 and len(second) == 2
    assert not {m.id for m in first} & {m.id for m in second}
    assert b.claim(now) == []
