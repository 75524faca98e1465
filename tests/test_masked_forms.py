"""Personal data in task forms and REST responses: masked for roles whose work does not need
phone numbers and addresses, the real value kept when a masked field comes back unchanged,
and every unmasked view recorded (SPEC, seed 002)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import PASSWORD, token_for
from sqlalchemy import select

from engine import SYSTEM
from engine.identity import add_user
from engine.models import AccessRecord
from tests.test_pages import body, login, post_form

BPMN = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"
                  id="stock_defs" targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:collaboration id="stock_collab">
    <bpmn:participant id="stock_pool" name="Stock check" processRef="stock_check" />
  </bpmn:collaboration>
  <bpmn:process id="stock_check" name="Stock check" isExecutable="true">
    <bpmn:laneSet id="stock_lanes">
      <bpmn:lane id="lane_warehouse" name="warehouse">
        <bpmn:flowNodeRef>start</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>check</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>done</bpmn:flowNodeRef>
      </bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="check" name="Check stock">
      <bpmn:extensionElements>
        <spiffworkflow:properties>
          <spiffworkflow:property name="formJsonSchemaFilename" value="stock-check.schema.json" />
        </spiffworkflow:properties>
      </bpmn:extensionElements>
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:endEvent id="done"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="check" />
    <bpmn:sequenceFlow id="f2" sourceRef="check" targetRef="done" />
  </bpmn:process>
</bpmn:definitions>
"""

FORM = {
    "type": "object", "required": ["customer_phone", "customer_address", "in_stock"],
    "properties": {
        "customer_phone": {"type": "string", "title": "电话 Phone"},
        "customer_address": {"type": "string", "title": "地址 Address"},
        "in_stock": {"type": "string", "enum": ["yes", "no"], "title": "有货 In stock"},
    },
}
PHONE, ADDRESS = "13812345678", "上海市浦东新区世纪大道100号"


@pytest.fixture
def stock_case(client: Any) -> dict[str, Any]:
    svc = client.application.extensions["aftercare"]
    svc.engine.deploy([("stock_check.bpmn", BPMN), ("stock-check.schema.json", json.dumps(FORM))], SYSTEM)
    with svc.db.write() as s:
        add_user(s, "stock", PASSWORD, ["warehouse"])
    return svc.engine.start_case("stock_check", {"customer_phone": PHONE, "customer_address": ADDRESS}, SYSTEM)


def views(client: Any, case_id: int) -> list[AccessRecord]:
    with client.application.extensions["aftercare"].db.read() as s:
        return list(s.scalars(select(AccessRecord).where(AccessRecord.case_id == case_id,
                                                         AccessRecord.action == "view_personal_data")))


def case_data(client: Any, case_id: int) -> dict[str, Any]:
    return client.application.extensions["aftercare"].engine.get_case(case_id, SYSTEM)["data"]


def submit_as_warehouse(client: Any, case: dict[str, Any], phone: str, address: str, in_stock: str) -> Any:
    """The stock check's form posted by the warehouse clerk (who is shown personal data masked)."""
    token = login(client, "stock")
    return post_form(client, f"/tasks/{case['tasks'][0]['id']}", token, {
        "customer_phone": phone, "customer_address": address, "in_stock": in_stock})


def test_task_form_prefill_is_masked_and_an_untouched_field_keeps_the_real_value(
        client: Any, stock_case: dict[str, Any]) -> None:
    task_id = stock_case["tasks"][0]["id"]
    login(client, "stock")
    page = body(client.get(f"/tasks/{task_id}"))
    assert PHONE not in page and ADDRESS not in page
    assert 'value="138****5678"' in page and "上海市浦东****" in page
    res = submit_as_warehouse(client, stock_case, "138****5678", "上海市浦东****", "yes")
    assert res.status_code == 302, body(res)[:500]
    data = case_data(client, stock_case["id"])
    assert data["customer_phone"] == PHONE and data["customer_address"] == ADDRESS and data["in_stock"] == "yes"
    assert views(client, stock_case["id"]) == []  # nothing unmasked was shown to the warehouse


def test_a_value_typed_over_the_mask_is_saved_as_typed(client: Any, stock_case: dict[str, Any]) -> None:
    res = submit_as_warehouse(client, stock_case, "13900001111", "上海市浦东****", "no")
    assert res.status_code == 302
    data = case_data(client, stock_case["id"])
    assert data["customer_phone"] == "13900001111" and data["customer_address"] == ADDRESS


def test_rest_api_masks_case_data_for_roles_that_do_not_need_it(client: Any, stock_case: dict[str, Any]) -> None:
    cid, task_id = stock_case["id"], stock_case["tasks"][0]["id"]
    stock, owner, boss = token_for(client, "stock"), token_for(client, "owner"), token_for(client, "boss")
    task = client.get(f"/api/tasks/{task_id}", headers=stock).get_json()
    assert task["data"]["customer_phone"] == "138****5678" and task["data"]["customer_address"].endswith("****")
    for path in (f"/api/instances/{cid}", f"/api/instances/{cid}/history"):
        text = client.get(path, headers=owner).get_data(as_text=True)
        assert PHONE not in text and ADDRESS not in text and "138****5678" in text
    assert views(client, cid) == []
    res = client.post(f"/api/tasks/{task_id}/complete", headers=stock, json={"data": {
        "customer_phone": task["data"]["customer_phone"], "customer_address": task["data"]["customer_address"],
        "in_stock": "yes"}})
    assert res.status_code == 200, res.get_json()
    assert res.get_json()["data"]["customer_phone"] == "138****5678"  # the response is masked too
    assert case_data(client, cid)["customer_phone"] == PHONE  # and the case kept the real number
    # A supervisor's work needs it: shown as it is, and the view is recorded with the fields.
    shown = client.get(f"/api/instances/{cid}", headers=boss).get_json()
    assert shown["data"]["customer_phone"] == PHONE
    recorded = views(client, cid)
    assert [r.actor for r in recorded] == ["boss"]
    assert {"data.customer_phone", "data.customer_address"} <= set(recorded[0].detail["fields"])


def test_recorded_fields_are_exactly_what_masking_hides() -> None:
    """A view is recorded for the fields masking would hide, no more and no fewer: nested
    objects, lists of objects and lists of numbers under a phone field alike."""
    from engine import Actor
    from web.case_view import masked, personal_fields

    data = {"customer_phone": PHONE, "customer": {"address": ADDRESS, "tel": "", "name": "王芳"},
            "contacts": [{"mobile": "13900001111"}, {"note": "call after 6"}], "phone": ["02012345678", "1"],
            "phones_count": "2", "history": [["a", {"home_address": "北京"}]], "id": 7}
    shown = masked(data, Actor("stock", frozenset({"warehouse"})))

    def changed(a: Any, b: Any, prefix: str = "") -> list[str]:
        if isinstance(a, dict):
            return [p for k in a for p in changed(a[k], b[k], f"{prefix}{k}.")]
        if isinstance(a, list):
            return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in changed(x, y, f"{prefix}{i}.")]
        return [prefix[:-1]] if a != b else []

    assert sorted(personal_fields(data)) == sorted(changed(data, shown)) == sorted([
        "customer_phone", "customer.address", "contacts.0.mobile", "phone.0", "phone.1", "history.0.1.home_address"])


def test_a_replay_divergence_shows_case_data_masked_as_everywhere_else(client: Any) -> None:
    """Verification shows both sides of a divergence: the case data recorded and replayed."""
    from tests.test_audit import REGISTER, edit_event, rehash, seq_of

    svc = client.application.extensions["aftercare"]
    case = svc.engine.start_case("sample", {"customer_phone": PHONE}, SYSTEM)
    svc.engine.complete_task(case["tasks"][0]["id"], {**REGISTER, "customer_phone": PHONE}, SYSTEM)
    seq = seq_of(svc.engine, case["id"], "task_completed", "register")
    edit_event(svc.engine, case["id"], seq, payload={"data": {**REGISTER, "customer_phone": "13900009999"}})
    rehash(svc.engine, case["id"])  # a consistent forgery: only the replay finds it

    login(client, "owner")  # process owners read cases but do not call customers
    page = body(client.get(f"/instances/{case['id']}/verify"))
    assert f"在事件 #{seq} 处不一致" in page  # the divergence is shown...
    assert PHONE not in page and "13900009999" not in page and "138****5678" in page  # ...masked
    report = client.get(f"/api/instances/{case['id']}/verify", headers=token_for(client, "auditor")).get_json()
    assert report["replay"]["divergence"]["seq"] == seq
    assert PHONE not in json.dumps(report) and "139****9999" in json.dumps(report)
    assert views(client, case["id"]) == []

    login(client, "boss")
    page = body(client.get(f"/instances/{case['id']}/verify"))
    assert PHONE in page and "13900009999" in page
    assert [r.actor for r in views(client, case["id"])] == ["boss"]


def test_masked_text_changed_in_part_is_refused_naming_the_field(client: Any, stock_case: dict[str, Any]) -> None:
    task_id = stock_case["tasks"][0]["id"]
    res = submit_as_warehouse(client, stock_case, "138****5679", "上海市浦东****", "yes")
    assert res.status_code == 422
    page = body(res)
    assert "请保持原样，或输入完整的新内容" in page and 'id="f-customer_phone-error"' in page
    assert PHONE not in page
    res = client.post(f"/api/tasks/{task_id}/complete", headers=token_for(client, "stock"), json={"data": {
        "customer_phone": "138****5678", "customer_address": "上海市浦东新区****", "in_stock": "yes"}})
    assert res.status_code == 422
    assert res.get_json()["errors"] == [{"field": "customer_address", "message": "shown masked: send it back "
                                                                              "unchanged or type the whole new value"}]
    assert case_data(client, stock_case["id"]) == {"customer_phone": PHONE, "customer_address": ADDRESS}
    assert client.application.extensions["aftercare"].engine.get_case(stock_case["id"], SYSTEM)["tasks"]


def test_masked_values_are_kept_in_nested_groups_of_fields() -> None:
    """Forms with a group of fields (the installation order's customer) come back nested."""
    from engine import Actor, FormInvalid
    from web.case_view import keep_masked_values, masked

    sales = Actor("sales1", frozenset({"sales"}))
    current = {"customer": {"name": "王芳", "phone": PHONE, "address": ADDRESS}, "order_no": "A-1"}
    sent = masked(current, sales)
    assert sent["customer"]["phone"] == "138****5678"
    assert keep_masked_values({**sent, "order_no": "A-2"}, current, sales) == {**current, "order_no": "A-2"}
    typed = {**sent, "customer": {**sent["customer"], "address": "北京市海淀区中关村大街1号"}}
    assert keep_masked_values(typed, current, sales)["customer"] == {
        "name": "王芳", "phone": PHONE, "address": "北京市海淀区中关村大街1号"}
    with pytest.raises(FormInvalid) as refused:
        keep_masked_values({"customer": {**sent["customer"], "phone": "139****5678"}}, current, sales)
    assert [e["field"] for e in refused.value.errors] == ["customer.phone"]
    boss = Actor("boss", frozenset({"supervisor"}))
    assert keep_masked_values(sent, current, boss) is sent  # shown unmasked: taken as typed
