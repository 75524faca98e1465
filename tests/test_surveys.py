"""Survey links: ``survey.send`` puts a signed, expiring link in the outbox; the customer's
answer reaches the waiting case as ``survey_answered``; reused and expired links get a clear
page, and an unanswered survey counts as no response."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import time_machine
from click.testing import CliRunner
from sqlalchemy import select

from engine import SYSTEM, HandlerRegistry
from engine.models import OutboxMessage, utcnow
from handlers import surveys
from handlers.surveys import Survey

HERE = Path(__file__).parent
PUBLIC_PROCESSES = HERE / "public_processes"
CUSTOMER = {"name": "李娜", "phone": "13800138000", "email": "li.na@example.com"}


@pytest.fixture
def survey_app(db_url: str) -> Iterator[Any]:
    from app import create_app

    registry = HandlerRegistry()
    surveys.register(registry)
    app = create_app({"DATABASE_URL": db_url, "SECRET_KEY": "test-secret", "TESTING": True,
                      "HANDLER_REGISTRY": registry, "SCHEDULER": "off"})
    app.extensions["aftercare"].engine.deploy_paths([PUBLIC_PROCESSES / "survey_case.bpmn"], SYSTEM)
    yield app
    app.extensions["aftercare"].db.dispose()


def _send_survey(app: Any, channel: str = "email", case_ref: str = "CMP-2026-000042",
                 customer: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """A case that has had its follow-up visit and now waits for the survey answer."""
    engine = app.extensions["aftercare"].engine
    data = {"customer": customer or CUSTOMER, "case_ref": case_ref, "channel": channel}
    case = engine.start_case("survey_case", data, SYSTEM)
    [visit] = case["tasks"]
    case = engine.complete_task(visit["id"], {}, SYSTEM)
    assert case["status"] == "waiting" and case["tasks"] == []
    return case["id"], case["data"]["survey"]


def _path(link: str) -> str:
    return link[link.index("/survey/"):]


def _survey_row(app: Any, survey_id: int) -> Survey:
    with app.extensions["aftercare"].db.read() as s:
        row = s.get(Survey, survey_id)
        assert row is not None
        return row


def test_send_creates_a_signed_expiring_link_and_writes_the_outbox(survey_app: Any) -> None:
    before = utcnow()
    case_id, survey = _send_survey(survey_app)
    row = _survey_row(survey_app, survey["survey_id"])
    token = _path(survey["link"]).split("/")[-1]

    assert set(survey) == {"survey_id", "link", "expires_at"}
    assert row.status == "sent" and row.case_id == case_id and row.case_ref == "CMP-2026-000042"
    assert row.kind == "complaint" and row.context == {"category": "quality"}
    # Seven days (the survey.expiry policy's default), and only the token's hash is stored.
    assert dt.timedelta(days=7) <= row.expires_at - before < dt.timedelta(days=7, minutes=1)
    assert survey["expires_at"] == row.expires_at.isoformat()
    assert row.token_hash == surveys.hash_token(token) and token not in row.token_hash
    assert surveys.verified_hash(token) == row.token_hash
    assert surveys.verified_hash(token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None  # tampered
    with survey_app.extensions["aftercare"].db.read() as s:
        [msg] = s.scalars(select(OutboxMessage).where(OutboxMessage.case_id == case_id)).all()
    # The customer wrote by e-mail: the link goes by e-mail, in Chinese and English.
    assert (msg.channel, msg.recipient, msg.template) == ("email", CUSTOMER["email"], "survey_complaint")
    assert survey["link"] in msg.body and "评分" in msg.body and "Please rate" in msg.body
    assert msg.payload["survey_id"] == survey["survey_id"]


def test_other_channels_get_the_link_by_sms(survey_app: Any) -> None:
    case_id, _ = _send_survey(survey_app, channel="web")
    with survey_app.extensions["aftercare"].db.read() as s:
        msg = s.scalars(select(OutboxMessage).where(OutboxMessage.case_id == case_id)).one()
    assert (msg.channel, msg.recipient) == ("sms", CUSTOMER["phone"])


def test_the_customer_records_number_wins(survey_app: Any) -> None:
    models = pytest.importorskip("handlers.models", reason="customer records (handlers/models.py) not present")
    db = survey_app.extensions["aftercare"].db
    with db.write() as s:
        record = models.Customer(name="李娜", phone="13700007777", email="", address="")
        s.add(record)
        s.flush()
        record_id = record.id
    case_id, _ = _send_survey(survey_app, channel="phone", customer={**CUSTOMER, "id": record_id})
    with db.read() as s:
        msg = s.scalars(select(OutboxMessage).where(OutboxMessage.case_id == case_id)).one()
    assert (msg.channel, msg.recipient) == ("sms", "13700007777")


def test_answer_once_reaches_the_waiting_case_and_a_second_use_is_refused(survey_app: Any) -> None:
    client = survey_app.test_client()
    engine = survey_app.extensions["aftercare"].engine
    case_id, survey = _send_survey(survey_app)
    url = _path(survey["link"])

    page = client.get(url)
    assert page.status_code == 200 and "满意度调查" in page.text and 'name="score"' in page.text
    assert page.headers["Cache-Control"] == "no-store"

    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert client.post(url, data={"score": "2"}).status_code == 403  # no token of the visitor's session
    assert _survey_row(survey_app, survey["survey_id"]).status == "sent"
    answered = client.post(url, data={"score": "2", "comment": "等了三天 Waited three days", "csrf_token": token})
    assert answered.status_code == 200 and "感谢您的评价" in answered.text and "customer-care" in answered.text

    case = engine.get_case(case_id, SYSTEM)
    assert case["data"]["survey_response"] == {"survey_id": survey["survey_id"], "score": 2,
                                               "comment": "等了三天 Waited three days"}
    assert [t["spec"] for t in case["tasks"]] == ["review_answer"]  # the case moved on
    row = _survey_row(survey_app, survey["survey_id"])
    assert (row.status, row.score, row.comment) == ("answered", 2, "等了三天 Waited three days")
    assert row.answered_at is not None and row.delivered_at is not None

    again = client.post(url, data={"score": "5"})
    assert again.status_code == 409 and "已经提交过" in again.text and "already been answered" in again.text
    looked = client.get(url)
    assert looked.status_code == 200 and "already been answered" in looked.text
    messages = [e for e in engine.history(case_id, SYSTEM) if e["type"] == "message_delivered"]
    assert len(messages) == 1
    assert _survey_row(survey_app, survey["survey_id"]).score == 2


def test_a_score_is_required_and_must_be_1_to_5(survey_app: Any) -> None:
    client = survey_app.test_client()
    case_id, survey = _send_survey(survey_app)
    url = _path(survey["link"])
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(url).text).group(1)
    for bad in ({}, {"score": "0"}, {"score": "6"}, {"score": "abc"}):
        res = client.post(url, data={**bad, "csrf_token": token})
        assert res.status_code == 422 and 'id="e-score"' in res.text, bad
    assert _survey_row(survey_app, survey["survey_id"]).status == "sent"
    assert survey_app.extensions["aftercare"].engine.get_case(case_id, SYSTEM)["status"] == "waiting"


def test_forged_or_unknown_links_get_a_clear_page(survey_app: Any) -> None:
    client = survey_app.test_client()
    _, survey = _send_survey(survey_app)
    token = _path(survey["link"]).split("/")[-1]
    forged = token[:-3] + ("xyz" if not token.endswith("xyz") else "abc")
    unknown = surveys.new_token()  # genuinely signed, but no such survey
    for bad in (forged, unknown, "nonsense"):
        res = client.get(f"/survey/{bad}")
        assert res.status_code == 404 and "链接无效" in res.text and "not valid" in res.text
        assert client.post(f"/survey/{bad}", data={"score": "5"}).status_code == 404


def test_after_seven_days_the_link_is_expired_and_counts_as_no_response(survey_app: Any) -> None:
    client = survey_app.test_client()
    svc = survey_app.extensions["aftercare"]
    case_id, survey = _send_survey(survey_app)
    url = _path(survey["link"])

    with time_machine.travel(utcnow() + dt.timedelta(days=6, hours=23), tick=False):
        assert client.get(url).status_code == 200  # still open the day before

    with time_machine.travel(utcnow() + dt.timedelta(days=7, minutes=1), tick=False):
        page = client.get(url)
        assert page.status_code == 410 and "问卷已过期" in page.text and "has expired" in page.text
        assert client.post(url, data={"score": "5"}).status_code == 410
        row = _survey_row(survey_app, survey["survey_id"])
        assert row.status == "expired" and row.expired_at is not None and row.score is None
        # The case's own timer (same expiry) moves it on as unanswered.
        assert svc.engine.fire_due_timers() == 1
        case = svc.engine.get_case(case_id, SYSTEM)
        assert case["status"] == "completed" and case["data"]["survey_unanswered"] is True
        assert "survey_response" not in case["data"]


def test_expiry_sweep_and_cli_record_unanswered_surveys(survey_app: Any, db_url: str) -> None:
    db = survey_app.extensions["aftercare"].db
    _, first = _send_survey(survey_app, case_ref="CMP-2026-000001")
    _, second = _send_survey(survey_app, case_ref="CMP-2026-000002")
    with db.write() as s:  # the first was sent eight days ago
        s.get(Survey, first["survey_id"]).expires_at = utcnow() - dt.timedelta(days=1)

    assert surveys.expire_surveys(db) == 1
    assert _survey_row(survey_app, first["survey_id"]).status == "expired"
    assert _survey_row(survey_app, second["survey_id"]).status == "sent"
    assert surveys.expire_surveys(db) == 0

    from app import cli

    env = {"AFTERCARE_DATABASE_URL": db_url, "AFTERCARE_SECRET_KEY": "test-secret", "AFTERCARE_SCHEDULER": "off"}
    with time_machine.travel(utcnow() + dt.timedelta(days=8), tick=False):
        result = CliRunner().invoke(cli, ["surveys", "expire"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1 survey(s) expired unanswered" in result.output
    assert _survey_row(survey_app, second["survey_id"]).status == "expired"


def test_a_new_round_replaces_the_unanswered_earlier_link(survey_app: Any) -> None:
    """After customer care the case sends a new survey; the old link must not answer it."""
    from handlers.surveys import send_survey

    svc = survey_app.extensions["aftercare"]
    case_id, old = _send_survey(survey_app)
    with svc.db.write() as s:
        from engine.services import ServiceContext

        ctx = ServiceContext(session=s, case_id=case_id, process_key="survey_case", task_spec="send_survey",
                             data={"customer": CUSTOMER, "case_ref": "CMP-2026-000042"}, actor="system",
                             now=utcnow())
        new = send_survey(ctx, survey="complaint", case_ref="CMP-2026-000042")
    assert _survey_row(survey_app, old["survey_id"]).status == "expired"
    client = survey_app.test_client()
    assert client.post(_path(old["link"]), data={"score": "1"}).status_code == 410
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(_path(new["link"])).text).group(1)
    assert client.post(_path(new["link"]), data={"score": "5", "csrf_token": token}).status_code == 200
    assert svc.engine.get_case(case_id, SYSTEM)["data"]["survey_response"]["survey_id"] == new["survey_id"]


def test_two_submissions_at_once_record_one_answer(survey_app: Any, db_url: str) -> None:
    """The page checks first, but only the conditional update decides: two racing posts, one answer."""
    import threading

    from engine import Database, WorkflowEngine

    svc = survey_app.extensions["aftercare"]
    case_id, survey = _send_survey(survey_app)
    token = _path(survey["link"]).split("/")[-1]
    results: list[Any] = []
    start = threading.Barrier(2)

    def submit(score: int) -> None:
        db = Database(db_url)
        try:
            start.wait()
            results.append(surveys.answer_survey(db, WorkflowEngine(db, svc.engine.handlers), token, score, ""))
        finally:
            db.dispose()

    threads = [threading.Thread(target=submit, args=(score,)) for score in (4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert sorted(r.recorded for r in results) == [False, True]
    winner = next(r for r in results if r.recorded)
    assert all(r.state == "answered" for r in results)
    assert _survey_row(survey_app, survey["survey_id"]).score == winner.score
    history = svc.engine.history(case_id, SYSTEM)
    assert [e["payload"]["payload"]["score"] for e in history if e["type"] == "message_delivered"] == [winner.score]
    # And once more, sequentially, straight to the service: refused without a second message.
    again = surveys.answer_survey(svc.db, svc.engine, token, 1, "")
    assert (again.state, again.recorded) == ("answered", False)
    assert len([e for e in svc.engine.history(case_id, SYSTEM) if e["type"] == "message_delivered"]) == 1
