"""Scenario tests of the five procedures, driven through the engine's public API only
(start_case, complete_task, deliver_message, fire_due_timers) with the application's handlers,
SLA policies and diagrams, asserting history, outbox and domain data. Each runs on SQLite and
PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest
import time_machine
from domain_support import PASSWORD, STAFF, add_users, build_engine, load_demo, outbox, product_app
from sqlalchemy import func, select, update

from engine import SYSTEM, Actor, Database, Forbidden, FormInvalid, WorkflowEngine
from engine.models import Case, Timer
from handlers.models import (
    CaseLink,
    CaseReference,
    Compensation,
    Customer,
    CustomerProduct,
    Invoice,
    PartReservation,
    ProcurementRequest,
    StaffProfile,
    Stock,
    TechnicianAssignment,
)
from handlers.parts import receive, receive_and_notify, tell_waiting_cases

UTC = dt.UTC
NOW = "2026-03-02T09:00:00+08:00"
SHANGHAI_CUSTOMER = {"name": "王秀英", "phone": "13912345678", "email": "wang.xy@example.com",
                     "address": "上海市浦东新区张杨路500号3栋1201室"}


@dataclass
class World:
    db: Database
    engine: WorkflowEngine
    actors: dict[str, Actor]

    def start(self, process: str, user: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.engine.start_case(process, data or {}, self.actors[user])

    def case(self, case_id: int) -> dict[str, Any]:
        return self.engine.get_case(case_id, SYSTEM)

    def open_specs(self, case_id: int) -> list[str]:
        return sorted(t["spec"] for t in self.case(case_id)["tasks"])

    def do(self, case_id: int, spec: str, user: str, data: dict[str, Any]) -> dict[str, Any]:
        """Complete the open task ``spec`` of the case as ``user`` (who must be allowed to)."""
        tasks = [t for t in self.case(case_id)["tasks"] if t["spec"] == spec]
        assert tasks, f"{spec} is not open; open: {self.open_specs(case_id)}"
        return self.engine.complete_task(tasks[0]["id"], data, self.actors[user])

    def history(self, case_id: int) -> list[dict[str, Any]]:
        return self.engine.history(case_id, SYSTEM)

    def results(self, case_id: int, handler: str) -> list[Any]:
        return [e["payload"]["result"] for e in self.history(case_id)
                if e["type"] == "service_task_completed" and e["payload"]["handler"] == handler]

    def completed_tasks(self, case_id: int) -> list[str]:
        return [e["task"] for e in self.history(case_id) if e["type"] == "task_completed"]


@pytest.fixture
def world(db: Database) -> World:
    actors = add_users(db, STAFF)
    engine = build_engine(db)
    load_demo(db, ("parts", "staff", "faq"))  # customers come from intake in these scenarios
    return World(db, engine, actors)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat()


def at(text: str = NOW) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# --- inquiry ---------------------------------------------------------------------------------


def register_inquiry(w: World, question: str, customer: dict[str, Any] | None = None) -> int:
    case = w.start("inquiry", "agent")
    assert w.open_specs(case["id"]) == ["register_inquiry"]
    w.do(case["id"], "register_inquiry", "agent", {
        "channel": "phone", "customer": customer or SHANGHAI_CUSTOMER, "product": {"model": "KFR-35GW/N1"},
        "question": question})
    return case["id"]


def test_faq_answers_an_inquiry(world: World) -> None:
    case_id = register_inquiry(world, "空调不制冷了，是什么原因？")
    case = world.case(case_id)
    assert case["status"] == "waiting" and case["tasks"] == []  # waiting for the customer's confirmation
    ref = case["data"]["case_ref"]
    assert ref.startswith("INQ-2") and len(ref) == len("INQ-2026-000001")
    faq = case["data"]["faq_result"]
    assert faq["confident"] is True and "过滤网" in faq["answer"]
    sent = outbox(world.db, case_id, "inquiry_auto_reply")
    assert len(sent) == 1 and sent[0].channel == "sms" and sent[0].recipient == "13912345678"
    assert faq["answer"] in sent[0].body and ref in sent[0].subject and "Answer to your inquiry" in sent[0].subject

    assert world.engine.deliver_message("inquiry_confirmation", {"case_ref": ref}, {"resolved": True},
                                        SYSTEM) == [case_id]
    case = world.case(case_id)
    assert case["status"] == "completed"
    types = [e["type"] for e in world.history(case_id)]
    assert types.count("message_delivered") == 1 and types[-1] != "incident"
    assert world.completed_tasks(case_id) == ["register_inquiry"]  # nobody had to answer by hand
    with world.db.read() as s:
        customer = s.scalars(select(Customer).where(Customer.phone == "13912345678")).one()
        assert s.get(CaseReference, ref).customer_id == customer.id
        assert [p.model for p in s.scalars(select(CustomerProduct).where(CustomerProduct.customer_id == customer.id))] \
            == ["KFR-35GW/N1"]


def test_unanswered_auto_reply_and_lookup_go_to_an_agent_with_a_reminder(world: World) -> None:
    case_id = register_inquiry(world, "空调不制冷了，是什么原因？")
    ref = world.case(case_id)["data"]["case_ref"]
    # The customer never confirms: after the wait the case goes to an agent.
    with time_machine.travel(dt.datetime.now(UTC) + dt.timedelta(hours=25), tick=False):
        assert world.engine.fire_due_timers(dt.datetime.now(UTC)) >= 1
        promised = dt.datetime.now(UTC) + dt.timedelta(hours=3)
        world.do(case_id, "answer_inquiry", "agent", {
            "question": "空调不制冷", "needs_lookup": True, "lookup_reason": "需要查询该机型的维修记录",
            "expected_reply_at": iso(promised)})
        wait = outbox(world.db, case_id, "inquiry_expected_wait")
        assert len(wait) == 1 and "维修记录" not in wait[0].body and ref in wait[0].body
    with time_machine.travel(promised + dt.timedelta(minutes=1), tick=False):
        assert world.engine.fire_due_timers(dt.datetime.now(UTC)) >= 1
    reminders = outbox(world.db, case_id, "inquiry_follow_up_due")
    assert [m.recipient for m in reminders] == ["agent"] and all(m.channel == "staff" for m in reminders)
    world.do(case_id, "follow_up_inquiry", "agent", {"lookup_result": "上次更换了电容", "answer": "需要上门检测"})
    case = world.do(case_id, "wrap_up_inquiry", "agent", {"anything_else": False, "follow_on": "none"})
    assert case["status"] == "completed"


def test_inquiry_becomes_a_linked_complaint(world: World) -> None:
    case_id = register_inquiry(world, "你们公司的维修师傅上次态度太差了")
    case = world.case(case_id)
    assert case["data"]["faq_result"]["confident"] is False
    world.do(case_id, "answer_inquiry", "agent", {"question": "维修服务态度差", "needs_lookup": False,
                                                   "answer": "非常抱歉，我们为您转投诉处理。"})
    done = world.do(case_id, "wrap_up_inquiry", "agent", {
        "anything_else": False, "follow_on": "complaint", "follow_on_summary": "客户投诉上次维修师傅服务态度差"})
    assert done["status"] == "completed"
    linked_ref = done["data"]["linked_case"]["case_ref"]
    assert linked_ref.startswith("CMP-")
    with world.db.read() as s:
        link = s.scalars(select(CaseLink).where(CaseLink.source_case_id == case_id)).one()
        assert link.status == "started" and link.target_ref == linked_ref and link.target_case_id is not None
        new_id = link.target_case_id
    complaint = world.case(new_id)
    assert complaint["process"] == "complaint" and complaint["started_by"] == "agent"
    assert complaint["data"]["case_ref"] == linked_ref
    assert complaint["data"]["linked_from"]["case_ref"] == done["data"]["case_ref"]
    assert complaint["data"]["description"] == "客户投诉上次维修师傅服务态度差"
    assert complaint["data"]["customer"]["phone"] == SHANGHAI_CUSTOMER["phone"]
    # Staff confirm the registration (never skipped for a linked case).
    assert [t["spec"] for t in complaint["tasks"]] == ["register_complaint"]
    assert "intake_complete" not in complaint["data"] or complaint["data"]["intake_complete"] is not True


# --- complaint -------------------------------------------------------------------------------


def register_complaint(w: World, category: str = "repair_service", severity: str = "medium") -> int:
    case = w.start("complaint", "agent")
    w.do(case["id"], "register_complaint", "agent", {
        "channel": "phone", "customer": SHANGHAI_CUSTOMER, "product": {"model": "KFR-35GW/N1"},
        "description": "维修后空调仍然不制冷，师傅迟到两小时", "occurred_at": "2026-03-01T14:00:00+08:00",
        "location": "上海市浦东新区张杨路500号", "people_involved": "维修技师"})
    w.do(case["id"], "classify_complaint", "handler", {"category": category, "severity": severity})
    return case["id"]


def investigate_and_propose(w: World, case_id: int) -> None:
    w.do(case_id, "investigate", "handler", {
        "owner_department": "after_sales_service", "findings": "技师未携带配件", "root_cause": "派工时未确认故障",
        "responsibility": "company"})


def propose(w: World, case_id: int, solution: str = "免费上门重新维修并更换电容") -> None:
    w.do(case_id, "propose_solution", "handler", {"analysis": "电容老化", "solution_type": "repair",
                                                  "proposed_solution": solution})


def negotiate(w: World, case_id: int, accepted: bool) -> None:
    data: dict[str, Any] = {"contact_method": "phone", "customer_response": "同意" if accepted else "不接受，要求换机",
                            "solution_accepted": accepted}
    if accepted:
        data["agreed_solution"] = "免费上门维修并赠送一次清洗"
    w.do(case_id, "negotiate_solution", "handler", data)


def implement_and_visit(w: World, case_id: int, resolved: bool = True) -> dict[str, Any]:
    if "implement_solution" in w.open_specs(case_id):
        w.do(case_id, "implement_solution", "handler", {"actions_taken": "已更换电容并清洗",
                                                        "completed_at": "2026-03-03T10:00:00+08:00"})
    return w.do(case_id, "follow_up_visit", "handler", {
        "visit_method": "phone", "visited_at": "2026-03-04T10:00:00+08:00", "customer_feedback": "制冷正常",
        "issue_resolved": resolved})


def answer_survey(w: World, case_id: int, score: int) -> list[int]:
    data = w.case(case_id)["data"]
    return w.engine.deliver_message("survey_answered", {"case_ref": data["case_ref"]},
                                    {"survey_id": data["survey"]["survey_id"], "score": score}, SYSTEM)


def test_complaint_accepted_and_customer_satisfied(world: World) -> None:
    case_id = register_complaint(world)
    data = world.case(case_id)["data"]
    assert data["case_ref"].startswith("CMP-") and data["is_major"] is False
    assert data["priority"] and data["owner_department"]
    investigate_and_propose(world, case_id)
    assert world.open_specs(case_id) == ["propose_solution"]  # not major: no meeting
    propose(world, case_id)
    negotiate(world, case_id, accepted=True)
    case = implement_and_visit(world, case_id)
    assert case["status"] == "waiting"
    surveys = outbox(world.db, case_id, "survey_complaint")
    assert len(surveys) == 1 and "/survey/" in surveys[0].body
    assert answer_survey(world, case_id, 5) == [case_id]
    case = world.case(case_id)
    assert case["status"] == "completed"
    assert world.completed_tasks(case_id) == [
        "register_complaint", "classify_complaint", "investigate", "propose_solution", "negotiate_solution",
        "implement_solution", "follow_up_visit"]
    assert [e["payload"]["decision"] for e in world.history(case_id) if e["type"] == "decision_evaluated"] \
        == ["DecisionTable_complaint_priority"]


def test_complaint_rejected_renegotiated_and_survey_unanswered(world: World) -> None:
    case_id = register_complaint(world)
    investigate_and_propose(world, case_id)
    propose(world, case_id, "上门维修")
    negotiate(world, case_id, accepted=False)
    assert world.open_specs(case_id) == ["propose_solution"]  # back to a new proposal
    propose(world, case_id, "更换主控板并延长保修一年")
    negotiate(world, case_id, accepted=True)
    implement_and_visit(world, case_id, resolved=True)
    # Nobody answers the survey: after its expiry (7 days) the case closes as "no response".
    with time_machine.travel(dt.datetime.now(UTC) + dt.timedelta(days=7, hours=1), tick=False):
        assert world.engine.fire_due_timers(dt.datetime.now(UTC)) >= 1
    case = world.case(case_id)
    assert case["status"] == "completed"
    assert world.completed_tasks(case_id).count("propose_solution") == 2
    assert world.completed_tasks(case_id).count("negotiate_solution") == 2
    assert any(e["type"] == "timer_fired" for e in world.history(case_id))
    ended = world.engine.element_states(case_id)["completed"]
    assert "survey_expired" in ended and "end_no_response" in ended and "survey_answered" not in ended


def test_dissatisfied_customer_goes_to_customer_care_with_compensation(world: World) -> None:
    case_id = register_complaint(world)
    investigate_and_propose(world, case_id)
    propose(world, case_id)
    negotiate(world, case_id, accepted=True)
    implement_and_visit(world, case_id)
    assert answer_survey(world, case_id, 2) == [case_id]
    assert world.open_specs(case_id) == ["customer_care"]
    world.do(case_id, "customer_care", "care", {
        "contact_notes": "客户对维修时效不满", "care_actions": "主管致电道歉", "grant_compensation": True,
        "compensation_type": "voucher", "compensation_amount": 200.5, "compensation_reason": "维修延误",
        "care_outcome": "follow_up"})
    compensation = world.case(case_id)["data"]["compensation"]
    assert compensation["amount"] == "200.50" and compensation["granted_by"] == "care"
    with world.db.read() as s:
        row = s.scalars(select(Compensation)).one()
        assert (row.amount_cents, row.compensation_type, row.case_ref) == (20050, "voucher",
                                                                           world.case(case_id)["data"]["case_ref"])
    implement_and_visit(world, case_id)  # the care team's follow-up visit, then a new survey
    assert len(outbox(world.db, case_id, "survey_complaint")) == 2
    assert answer_survey(world, case_id, 4) == [case_id]
    assert world.case(case_id)["status"] == "completed"


def test_supervisor_closes_an_unsatisfied_complaint_with_a_reason(world: World) -> None:
    case_id = register_complaint(world)
    investigate_and_propose(world, case_id)
    propose(world, case_id)
    negotiate(world, case_id, accepted=True)
    implement_and_visit(world, case_id)
    answer_survey(world, case_id, 1)
    world.do(case_id, "customer_care", "care", {
        "contact_notes": "客户要求全额退款", "care_actions": "多次沟通", "grant_compensation": False,
        "care_outcome": "request_closure", "closure_request_reason": "客户诉求超出政策"})
    assert world.open_specs(case_id) == ["supervisor_review"]
    case = world.do(case_id, "supervisor_review", "supervisor", {"supervisor_decision": "close",
                                                                 "close_reason": "已按政策最大限度补偿"})
    assert case["status"] == "completed" and case["data"]["close_reason"] == "已按政策最大限度补偿"


def test_major_complaint_holds_a_cross_department_meeting(world: World) -> None:
    case_id = register_complaint(world, category="safety", severity="high")
    data = world.case(case_id)["data"]
    assert data["is_major"] is True and data["priority"] == "urgent"
    investigate_and_propose(world, case_id)
    assert world.open_specs(case_id) == ["cross_department_meeting"]
    world.do(case_id, "cross_department_meeting", "supervisor", {
        "meeting_at": "2026-03-02T15:00:00+08:00", "departments": ["quality", "after_sales_service"],
        "conclusions": "召回该批次电源模块"})
    propose(world, case_id, "免费更换电源模块")
    negotiate(world, case_id, accepted=True)
    implement_and_visit(world, case_id)
    answer_survey(world, case_id, 5)
    assert world.case(case_id)["status"] == "completed"
    assert "cross_department_meeting" in world.completed_tasks(case_id)


# --- repair dispatch -------------------------------------------------------------------------


def register_repair(w: World, region: str = "上海", fault_type: str = "not_cooling_heating") -> int:
    case = w.start("dispatch", "agent")
    w.do(case["id"], "register_repair", "agent", {
        "channel": "phone", "customer": SHANGHAI_CUSTOMER, "region": region,
        "product": {"model": "KFR-35GW/N1", "serial_number": "35GWB2409012345"}, "fault_type": fault_type,
        "fault_description": "开机半小时后仍不制冷", "urgency": "normal"})
    return case["id"]


def stock(w: World, part: str, location: str = "WH-SH") -> tuple[int, int]:
    with w.db.read() as s:
        row = s.get(Stock, (part, location))
        return row.on_hand, row.reserved


def sign_off_and_survey(w: World, case_id: int, answer: bool = True) -> None:
    w.do(case_id, "customer_sign_off", "tech", {"customer_confirmed": True, "technician_rating": 5})
    if answer:
        assert answer_survey(w, case_id, 5) == [case_id]
    else:
        with time_machine.travel(dt.datetime.now(UTC) + dt.timedelta(days=7, hours=1), tick=False):
            w.engine.fire_due_timers(dt.datetime.now(UTC))


def test_repair_fixed_on_first_visit(world: World) -> None:
    case_id = register_repair(world)
    data = world.case(case_id)["data"]
    assert data["required_skill"] == "refrigeration" and data["case_ref"].startswith("REP-")
    assignment = data["assignment"]
    # tech3 also works in Shanghai with the skill, but the certificate expired: never chosen.
    assert assignment["assigned"] is True and assignment["technician_id"] == "tech" and assignment["certified"]
    assert world.open_specs(case_id) == ["contact_customer"]
    # the task goes to the chosen technician, not to every technician
    assert [t["assignee"] for t in world.case(case_id)["tasks"]] == ["tech"]
    before = stock(world, "P-CAP-35")
    world.do(case_id, "contact_customer", "tech", {
        "contacted_at": "2026-03-02T09:30:00+08:00", "appointment_start": "2026-03-02T14:00:00+08:00",
        "appointment_end": "2026-03-02T16:00:00+08:00", "parts_needed": [{"part": "P-CAP-35", "quantity": 1}]})
    assert world.case(case_id)["data"]["reservation"]["all_reserved"] is True
    assert stock(world, "P-CAP-35") == (before[0], before[1] + 1)
    world.do(case_id, "on_site_repair", "tech", {
        "arrived_at": "2026-03-02T14:20:00+08:00", "arrived_on_time": True, "diagnosis": "启动电容失效",
        "work_done": "更换启动电容", "parts_used": [{"part": "P-CAP-35", "quantity": 1}], "fixed_first_visit": True})
    assert stock(world, "P-CAP-35") == (before[0] - 1, before[1])
    sign_off_and_survey(world, case_id)
    case = world.case(case_id)
    assert case["status"] == "completed"
    assert "request_parts" not in world.completed_tasks(case_id)
    with world.db.read() as s:
        rows = s.scalars(select(PartReservation).where(PartReservation.case_ref == data["case_ref"])).all()
        assert [(r.part_no, r.quantity, r.status) for r in rows] == [("P-CAP-35", 1, "consumed")]
    assert len(outbox(world.db, case_id, "survey_repair")) == 1


def repair_waiting_for_parts(world: World) -> int:
    """A repair not fixed on the first visit, waiting for a second four-way valve (one is in stock)."""
    case_id = register_repair(world)
    world.do(case_id, "contact_customer", "tech", {
        "contacted_at": "2026-03-02T09:30:00+08:00", "appointment_start": "2026-03-02T14:00:00+08:00",
        "appointment_end": "2026-03-02T16:00:00+08:00", "parts_needed": []})
    world.do(case_id, "on_site_repair", "tech", {
        "arrived_at": "2026-03-02T14:10:00+08:00", "arrived_on_time": True, "diagnosis": "四通阀卡死",
        "work_done": "检测", "parts_used": [], "fixed_first_visit": False})
    world.do(case_id, "request_parts", "tech", {"parts_required": [{"part": "P-VALVE-4W", "quantity": 2}]})
    return case_id


def test_repair_needs_parts_procurement_and_a_revisit(world: World) -> None:
    assert stock(world, "P-VALVE-4W") == (1, 0)
    case_id = repair_waiting_for_parts(world)
    ref = world.case(case_id)["data"]["case_ref"]
    case = world.case(case_id)
    assert case["status"] == "waiting"  # for the parts
    reservation = case["data"]["reservation"]
    assert reservation["all_reserved"] is False and reservation["missing"] == [
        {"part": "P-VALVE-4W", "part_name": "", "quantity": 1}]
    assert stock(world, "P-VALVE-4W") == (1, 1)  # what there was is held for this case
    with world.db.read() as s:
        request = s.scalars(select(ProcurementRequest).where(ProcurementRequest.case_ref == ref)).one()
        assert request.items == [{"part": "P-VALVE-4W", "quantity": 1}] and request.reason == "repair"
        # free stock fell below the reorder level (2): a reorder request too, once
        assert s.scalars(select(ProcurementRequest).where(ProcurementRequest.reason == "reorder")).all()
    assert case["data"]["procurement"]["request_id"] == request.id

    assert receive_and_notify(world.engine, request.id, world.actors["warehouse"]) == [case_id]
    assert world.open_specs(case_id) == ["agree_revisit"]
    assert world.case(case_id)["data"]["reservation"]["all_reserved"] is True
    assert stock(world, "P-VALVE-4W") == (2, 2)
    world.do(case_id, "agree_revisit", "tech", {"contacted_at": "2026-03-09T09:00:00+08:00",
                                                "appointment_start": "2026-03-10T09:00:00+08:00",
                                                "appointment_end": "2026-03-10T11:00:00+08:00"})
    world.do(case_id, "revisit_repair", "tech", {
        "arrived_at": "2026-03-10T09:20:00+08:00", "arrived_on_time": True, "work_done": "更换四通阀",
        "revisit_parts_used": [{"part": "P-VALVE-4W", "quantity": 2}], "fixed_on_revisit": True})
    assert stock(world, "P-VALVE-4W") == (0, 0)
    sign_off_and_survey(world, case_id, answer=False)
    assert world.case(case_id)["status"] == "completed"
    types = [e["type"] for e in world.history(case_id)]
    assert "message_delivered" in types and "timer_fired" in types
    assert [e["task"] for e in world.history(case_id) if e["type"] == "task_completed"].count("revisit_repair") == 1


def test_no_free_certified_technician_goes_to_manual_assignment(world: World) -> None:
    with world.db.write() as s:  # tech takes one order at a time; tech3's certificate has expired
        s.execute(update(StaffProfile).where(StaffProfile.username == "tech").values(max_open_orders=1))
    first = register_repair(world)
    assert world.case(first)["data"]["assignment"]["technician_id"] == "tech"
    second = register_repair(world)
    assignment = world.case(second)["data"]["assignment"]
    assert assignment["assigned"] is False
    assert world.open_specs(second) == ["assign_manually"]
    task = world.case(second)["tasks"][0]
    assert task["candidate_groups"] == ["dispatch"]
    # The technician named must exist, be active and hold a valid certificate (the box the
    # dispatcher ticks is not enough); a refusal names the field and changes nothing.
    for who, message in (("nobody", "no active technician 'nobody'"), ("agent", "no active technician 'agent'"),
                         ("tech3", "tech3 holds no certification valid today")):
        with pytest.raises(FormInvalid) as refused:
            world.do(second, "assign_manually", "dispatcher", {
                "assignment": {"assigned": True, "technician_id": who, "certified": True}})
        assert refused.value.errors == [{"field": "assignment.technician_id", "message": message}]
        assert world.open_specs(second) == ["assign_manually"]
    world.do(second, "assign_manually", "dispatcher", {
        "assignment": {"assigned": True, "technician_id": "tech2", "technician_name": "王师傅", "certified": True},
        "assignment_note": "上海技师满负荷，调北京技师支援"})
    assert world.open_specs(second) == ["contact_customer"]
    assert world.case(second)["data"]["assignment"]["technician_id"] == "tech2"
    with world.db.read() as s:
        assert [a.username for a in s.scalars(select(TechnicianAssignment).order_by(TechnicianAssignment.id))] \
            == ["tech"]  # the manual choice is the dispatcher's, not the handler's


# --- installation ----------------------------------------------------------------------------


def installation_until_delivered(w: World, model: str = "KFR-72LW/N2") -> int:
    case = w.start("installation", "sales")
    case_id = case["id"]
    w.do(case_id, "register_order", "sales", {
        "order_no": "SO-2026-0310", "channel": "store", "customer": SHANGHAI_CUSTOMER, "region": "上海",
        "order_items": [{"product_model": model, "quantity": 1, "unit_price": 8999}]})
    w.do(case_id, "review_order", "sales", {"order_valid": True, "review_notes": "信息齐全"})
    return case_id


def deliver(w: World, case_id: int) -> None:
    w.do(case_id, "agree_delivery", "dispatcher", {"delivery_at": "2026-03-20T10:00:00+08:00",
                                                   "delivery_address": SHANGHAI_CUSTOMER["address"]})
    w.do(case_id, "deliver", "dispatcher", {"delivered_at": iso(dt.datetime.now(UTC)), "goods_intact": True})


def install_and_invoice(w: World, case_id: int) -> dict[str, Any]:
    w.do(case_id, "agree_installation", "tech", {"install_at": "2026-03-21T09:00:00+08:00"})
    w.do(case_id, "install", "tech", {"arrived_at": "2026-03-21T08:50:00+08:00", "mounting_secure": True,
                                      "wiring_ok": True, "drainage_ok": True, "site_cleaned": True})
    w.do(case_id, "commission", "tech", {"commissioning_passed": True, "usage_explained": True})
    w.do(case_id, "customer_sign_off", "tech", {"signed_by": "王秀英", "signed_at": "2026-03-21T11:00:00+08:00",
                                                "customer_satisfied": True})
    return w.do(case_id, "payment_invoice", "sales", {
        "payment_method": "wechat_pay", "amount_paid": 8999, "paid_at": "2026-03-21T11:05:00+08:00",
        "invoice_type": "e_invoice", "invoice_title": "王秀英"})


def test_installation_stock_short_procurement_then_stock_arrives(world: World) -> None:
    assert stock(world, "KFR-72LW/N2") == (0, 0)
    case_id = installation_until_delivered(world)
    case = world.case(case_id)
    assert case["status"] == "waiting"
    assert case["data"]["stock"]["available"] is False
    notice = outbox(world.db, case_id, "delivery_date")
    expected = case["data"]["procurement"]["expected_date"]
    assert len(notice) == 1 and expected in notice[0].body and "SO-2026-0310" in notice[0].body

    assert receive_and_notify(world.engine, case["data"]["procurement"]["request_id"], SYSTEM) == [case_id]
    case = world.case(case_id)
    assert case["data"]["stock"]["available"] is True and world.open_specs(case_id) == ["agree_delivery"]
    assert stock(world, "KFR-72LW/N2") == (1, 0)
    deliver(world, case_id)
    assert world.case(case_id)["data"]["assignment"]["technician_id"] == "tech"  # certified installer in Shanghai
    case = install_and_invoice(world, case_id)
    assert case["data"]["invoice"]["invoice_no"].startswith("INV-") and case["data"]["invoice"]["amount"] == "8999.00"
    with world.db.read() as s:
        assert s.scalars(select(Invoice)).one().amount_cents == 899900
    assert case["status"] == "waiting"  # the revisits are still ahead


def test_goods_booked_without_the_notice_reach_the_waiting_case_by_the_safety_net(world: World) -> None:
    case_id = installation_until_delivered(world)
    request_id = world.case(case_id)["data"]["procurement"]["request_id"]
    assert tell_waiting_cases(world.engine) == []  # nothing received yet: the case keeps waiting
    with world.db.write() as s:  # the booking committed; the process died before telling the case
        receive(s, request_id, dt.datetime.now(dt.UTC))
    assert world.case(case_id)["status"] == "waiting"
    assert tell_waiting_cases(world.engine) == [case_id]
    assert world.open_specs(case_id) == ["agree_delivery"] and stock(world, "KFR-72LW/N2") == (1, 0)
    assert tell_waiting_cases(world.engine) == []  # told once


def test_an_invalid_order_is_rejected_and_the_customer_told_why(world: World) -> None:
    case = world.start("installation", "sales")
    world.do(case["id"], "register_order", "sales", {
        "order_no": "SO-2026-0999", "customer": SHANGHAI_CUSTOMER, "region": "上海",
        "order_items": [{"product_model": "KFR-35GW/N1", "quantity": 1}]})
    done = world.do(case["id"], "review_order", "sales", {"order_valid": False, "review_notes": "收货地址不在配送范围"})
    assert done["status"] == "completed"
    notice = outbox(world.db, case["id"], "order_rejected")
    assert len(notice) == 1 and "收货地址不在配送范围" in notice[0].body and "SO-2026-0999" in notice[0].subject
    assert "check_stock" not in world.engine.element_states(case["id"])["completed"]


def test_installation_revisits_fire_at_one_three_and_six_months(world: World) -> None:
    delivered = at("2026-03-20T10:00:00+08:00")
    with time_machine.travel(delivered, tick=False):
        case_id = installation_until_delivered(world, model="KFR-26GW/N1")  # in stock
        deliver(world, case_id)
        install_and_invoice(world, case_id)
    with world.db.read() as s:
        assert len(s.scalars(select(Timer).where(Timer.case_id == case_id, Timer.kind == "date",
                                                 Timer.status == "pending")).all()) == 3

    def revisit(month_offset: dt.timedelta, spec: str) -> None:
        with time_machine.travel(delivered + month_offset, tick=False):
            assert world.engine.fire_due_timers(dt.datetime.now(UTC)) >= 1
            assert spec in world.open_specs(case_id)
            world.do(case_id, spec, "agent", {
                "revisit_at": iso(dt.datetime.now(UTC)), "contact_method": "phone", "product_working": True,
                "maintenance_advice": "每两周清洗一次过滤网"})

    with time_machine.travel(delivered + dt.timedelta(days=27), tick=False):
        world.engine.fire_due_timers(dt.datetime.now(UTC))
        assert world.open_specs(case_id) == []  # nothing due before one month
    revisit(dt.timedelta(days=31, hours=1), "revisit_1m")
    assert world.open_specs(case_id) == []
    revisit(dt.timedelta(days=92, hours=1), "revisit_3m")
    revisit(dt.timedelta(days=184, hours=1), "revisit_6m")
    case = world.case(case_id)
    assert case["status"] == "completed"
    fired = [e for e in world.history(case_id) if e["type"] == "timer_fired"]
    assert [e["task"] for e in fired] == ["wait_revisit_1m", "wait_revisit_3m", "wait_revisit_6m"]
    fired_at = [dt.datetime.fromisoformat(e["at"]) for e in fired]
    assert [(t - delivered).days for t in fired_at] == [31, 92, 184]


# --- emergency -------------------------------------------------------------------------------


def add_recall_customers(db: Database, count: int) -> None:
    with db.write() as s:
        for n in range(count):
            customer = Customer(name=f"召回客户{n:03d}", phone=f"1370000{n:04d}", email="", address="上海市")
            s.add(customer)
            s.flush()
            s.add(CustomerProduct(customer_id=customer.id, model="KFR-35GW/N1", serial=f"RC{n:05d}", batch="B2599",
                                  region="上海"))
        # same model, other batch: not affected
        other = Customer(name="其他批次客户", phone="13799999999", email="", address="上海市")
        s.add(other)
        s.flush()
        s.add(CustomerProduct(customer_id=other.id, model="KFR-35GW/N1", serial="OK00001", batch="B2409",
                              region="上海"))


def test_only_coordinators_and_supervisors_activate_an_emergency_plan(world: World) -> None:
    with world.db.read() as s:
        before = s.scalar(select(func.count()).select_from(Case))
    for user in ("tech", "warehouse", "sales", "agent"):
        with pytest.raises(Forbidden, match="emergency, supervisor"):
            world.start("emergency", user)
        assert "emergency" not in {p["key"] for p in world.engine.startable_processes(world.actors[user])}
        assert "dispatch" in {p["key"] for p in world.engine.startable_processes(world.actors[user])}
    with world.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == before  # nothing was started
    assert "emergency" in {p["key"] for p in world.engine.startable_processes(world.actors["coordinator"])}
    assert world.start("emergency", "supervisor")["status"] == "running"


def test_emergency_notifies_200_customers_with_periodic_updates_then_review(world: World) -> None:
    add_recall_customers(world.db, 200)
    start = dt.datetime.now(UTC)
    case = world.start("emergency", "coordinator")
    case_id = case["id"]
    world.do(case_id, "activate_plan", "coordinator", {
        "plan_type": "product_quality", "incident_title": "B2599 批次电源模块召回",
        "incident_description": "该批次电源模块存在过热风险", "severity_level": "II",
        "product_models": ["KFR-35GW/N1"], "batches": ["B2599"], "regions": [], "coordinator": "coordinator",
        "customer_message": "请暂停使用空调，我们将免费上门更换电源模块。"})
    data = world.case(case_id)["data"]
    assert len(data["affected_customers"]) == 200
    notices = outbox(world.db, case_id, "emergency_notice")
    assert len(notices) == 200 and len({m.recipient for m in notices}) == 200
    assert all("免费上门更换电源模块" in m.body for m in notices)
    assert [m.recipient for m in outbox(world.db, case_id, "emergency_activated")] == ["coordinator"]
    assert world.open_specs(case_id) == ["run_response"]

    for n in range(1, 4):  # the progress cycle (every 4 h) fires three times while the response runs
        with time_machine.travel(start + dt.timedelta(hours=4 * n, minutes=1), tick=False):
            assert world.engine.fire_due_timers(dt.datetime.now(UTC)) >= 1
        assert len(outbox(world.db, case_id, "emergency_progress")) == n * (200 + 1)  # customers + supervisor
    assert world.open_specs(case_id) == ["run_response"]
    world.do(case_id, "run_response", "coordinator", {
        "actions_taken": "已上门更换 200 台电源模块", "customers_reached": 200, "incident_closed": True,
        "closed_at": iso(dt.datetime.now(UTC)), "closure_summary": "全部更换完毕"})
    assert len(outbox(world.db, case_id, "emergency_closed")) == 200
    case = world.do(case_id, "post_event_review", "coordinator", {
        "causes": [{"cause": "供应商电源模块批次缺陷", "category": "supplier"}],
        "improvement_actions": [{"action": "增加来料抽检", "owner": "质量部"}], "plan_update_needed": False})
    assert case["status"] == "completed"
    with world.db.read() as s:  # progress stopped with the response: no timer left behind
        assert not s.scalars(select(Timer).where(Timer.case_id == case_id, Timer.status == "pending")).all()


# --- the REST API, as a new user would drive it ------------------------------------------------


@pytest.fixture
def rest(db_url: str) -> Any:
    application = product_app(db_url, "rest-test")
    yield application.test_client()
    application.extensions["aftercare"].db.dispose()


def test_staff_start_every_procedure_empty_and_finish_a_repair_over_rest(rest: Any) -> None:
    def login(user: str) -> dict[str, str]:
        res = rest.post("/api/auth/token", json={"username": user, "password": PASSWORD})
        return {"Authorization": f"Bearer {res.get_json()['token']}"}

    agent, tech = login("agent"), login("tech")
    first = {"inquiry": "register_inquiry", "complaint": "register_complaint", "dispatch": "register_repair",
             "installation": "register_order", "emergency": "activate_plan"}
    for process, task in first.items():
        res = rest.post("/api/instances", json={"process": process, "data": {}}, headers=login("admin"))
        assert res.status_code == 201, res.get_json()
        assert [t["spec"] for t in res.get_json()["tasks"]] == [task]

    def complete(headers: dict[str, str], case_id: int, spec: str, data: dict[str, Any]) -> dict[str, Any]:
        tasks = rest.get("/api/tasks?scope=group", headers=headers).get_json()["tasks"]
        task = next(t for t in tasks if t["instance"] == case_id and t["spec"] == spec)
        res = rest.post(f"/api/tasks/{task['id']}/complete", json={"data": data}, headers=headers)
        assert res.status_code == 200, res.get_json()
        return res.get_json()

    case = rest.post("/api/instances", json={"process": "dispatch", "data": {}}, headers=agent).get_json()
    bad = rest.post(f"/api/tasks/{case['tasks'][0]['id']}/complete", json={"data": {"channel": "fax"}},
                    headers=agent)
    assert bad.status_code == 422 and {e["field"] for e in bad.get_json()["errors"]} >= {"channel"}
    complete(agent, case["id"], "register_repair", {
        "channel": "phone", "customer": SHANGHAI_CUSTOMER, "region": "上海", "product": {"model": "KFR-35GW/N1"},
        "fault_type": "water_leak", "fault_description": "室内机漏水", "urgency": "urgent"})
    complete(tech, case["id"], "contact_customer", {
        "contacted_at": "2026-03-02T09:30:00+08:00", "appointment_start": "2026-03-02T14:00:00+08:00",
        "appointment_end": "2026-03-02T16:00:00+08:00", "parts_needed": [{"part": "P-DRAIN", "quantity": 1}]})
    complete(tech, case["id"], "on_site_repair", {
        "arrived_at": "2026-03-02T14:05:00+08:00", "arrived_on_time": True, "diagnosis": "排水管堵塞",
        "work_done": "更换排水管", "parts_used": [{"part": "P-DRAIN", "quantity": 1}], "fixed_first_visit": True})
    done = complete(tech, case["id"], "customer_sign_off", {"customer_confirmed": True, "technician_rating": 4})
    assert done["status"] == "waiting"
    res = rest.post("/api/messages", headers=agent, json={
        "name": "survey_answered", "correlation": {"case_ref": done["data"]["case_ref"]},
        "payload": {"survey_id": done["data"]["survey"]["survey_id"], "score": 5}})
    assert res.status_code == 202 and res.get_json()["delivered_to"] == [case["id"]]
    final = rest.get(f"/api/instances/{case['id']}", headers=agent).get_json()
    assert final["status"] == "completed" and final["data"]["assignment"]["technician_id"] == "tech"
