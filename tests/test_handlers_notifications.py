"""Notifications: outbox rows (channel, recipient, template, rendered Chinese + English text)
written in the command's own transaction; groups resolved from the engine's users."""

from __future__ import annotations

import pytest
from domain_support import add_users, context, outbox
from sqlalchemy import update

from engine import Database
from engine.models import User
from handlers.models import Customer
from handlers.notifications import notify_customer, notify_group, render


@pytest.fixture
def people(db: Database) -> dict[str, int]:
    add_users(db, {"agent": ["hotline"], "agent2": ["hotline"], "gone": ["hotline"], "tech": ["technician"]})
    with db.write() as s:
        s.execute(update(User).where(User.username == "gone").values(active=False))
        rows = {"sms": Customer(name="张伟", phone="13800001111", email="", address="上海"),
                "mail": Customer(name="李娜", phone="13800002222", email="li.na@example.com", address="北京"),
                "none": Customer(name="无联系方式", phone="", email="", address="")}
        s.add_all(rows.values())
        s.flush()
        return {k: v.id for k, v in rows.items()}


def test_templates_render_chinese_with_english_beside(db: Database) -> None:
    subject, body = render("delivery_date", {"case_ref": "INS-2026-000007", "order_no": "SO-1",
                                             "expected_date": "2026-03-16"})
    assert subject == ("【INS-2026-000007】订单 SO-1 预计交货日期 / "
                       "[INS-2026-000007] Expected delivery date for order SO-1")
    zh, en = body.split("\n\n")
    assert "预计 2026-03-16 到货" in zh and "we expect it on 2026-03-16" in en
    # Times are shown in China time, never as raw ISO strings.
    _, body = render("inquiry_expected_wait", {"case_ref": "INQ-1", "expected_reply_at": "2026-03-02T06:30:00+00:00"})
    assert "2026-03-02 14:30" in body and "T06:30" not in body
    # A template name the code does not know still gives a readable notice.
    subject, body = render("new_template_from_a_process_owner", {"case_ref": "CMP-1", "note": "请回电"})
    assert "CMP-1" in subject and "note: 请回电" in body


def test_customers_are_notified_by_sms_or_by_email_when_they_wrote_by_email(db: Database,
                                                                          people: dict[str, int]) -> None:
    with db.write() as s:
        ctx = context(s, None, {"case_ref": "INQ-2026-000001"})
        sms = notify_customer(ctx, template="inquiry_auto_reply", customer_id=people["sms"], channel="phone",
                              context={"answer": "请清洗过滤网", "question": "不制冷"})
        mail = notify_customer(ctx, template="inquiry_auto_reply", customer_id=str(people["mail"]), channel="email",
                               context={"answer": "请清洗过滤网", "question": "不制冷"})
        nobody = notify_customer(ctx, template="inquiry_auto_reply", customer_id=people["none"])
    assert sms == {"sent": 1, "skipped": 0, "channel": "sms", "template": "inquiry_auto_reply"}
    assert mail["channel"] == "email" and nobody == {"sent": 0, "skipped": 1, "channel": "",
                                                     "template": "inquiry_auto_reply"}
    rows = outbox(db, template="inquiry_auto_reply")
    assert [(r.channel, r.recipient) for r in rows] == [("sms", "13800001111"), ("email", "li.na@example.com")]
    assert all("请清洗过滤网" in r.body and "INQ-2026-000001" in r.subject and r.status == "pending" for r in rows)
    assert rows[0].payload["customer_id"] == people["sms"]


def test_many_customers_at_once(db: Database, people: dict[str, int]) -> None:
    affected = {str(people[k]): {"customer_id": people[k]} for k in ("sms", "mail")}
    with db.write() as s:
        result = notify_customer(context(s), template="emergency_progress", customers=affected,
                                 context={"case_ref": "EMG-1", "incident_title": "召回"})
    assert result["sent"] == 2
    assert sorted(r.recipient for r in outbox(db, template="emergency_progress")) == ["13800001111", "13800002222"]


def test_group_notice_goes_to_each_active_member(db: Database, people: dict[str, int]) -> None:
    with db.write() as s:
        result = notify_group(context(s, None, {"case_ref": "INQ-9"}), group="hotline",
                              template="inquiry_follow_up_due", context={"expected_reply_at": "2026-03-02T08:00:00Z"})
        empty = notify_group(context(s), group="nobody-here", template="emergency_activated", context={})
    assert result["recipients"] == ["agent", "agent2"] and empty["sent"] == 0
    rows = outbox(db, template="inquiry_follow_up_due")
    assert [(r.channel, r.recipient) for r in rows] == [("staff", "agent"), ("staff", "agent2")]
    assert "INQ-9" in rows[0].body and "2026-03-02 16:00" in rows[0].body


def test_notices_disappear_with_a_command_that_fails(db: Database, people: dict[str, int]) -> None:
    with pytest.raises(RuntimeError), db.write() as s:
        notify_customer(context(s), template="emergency_notice", customer_id=people["sms"], context={})
        raise RuntimeError("the rest of the command failed")
    assert outbox(db) == []
