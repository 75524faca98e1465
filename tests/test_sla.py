"""SLA policies and calendars as data: due dates by calendar arithmetic, versions, API, CLI."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select
from timer_support import OWNER

from engine import SYSTEM, Forbidden, InvalidInput, NotFound, WorkflowEngine
from engine.calendars import china_calendar
from engine.models import Timer
from engine.sla import DEFAULT_POLICY_FILE, SlaPolicy, SlaService, due_for

SH = ZoneInfo("Asia/Shanghai")
ROOT = Path(__file__).resolve().parent.parent


def sh(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=SH)


def set_policy(db: Any, sla: SlaService, **data: Any) -> SlaPolicy:
    with db.write() as s:
        return sla.set_policy(s, data, OWNER)[0]


def use_china_2026(db: Any, sla: SlaService) -> None:
    """Pin the default calendar to the years these tests are about, whatever today is."""
    with db.write() as s:
        sla.set_calendar(s, "china", china_calendar([2026, 2027]).to_dict(), OWNER)


def history(engine: WorkflowEngine, case_id: int, type_: str) -> list[dict[str, Any]]:
    return [e for e in engine.history(case_id, SYSTEM) if e["type"] == type_]


# --- policies as values -------------------------------------------------------------------------


def test_policy_data_is_validated_field_by_field() -> None:
    with pytest.raises(InvalidInput) as err:
        SlaPolicy.from_dict({"name": "bad name!", "target": "soon", "warn_ratio": 1.5, "calendar": "24x7",
                             "escalation": [{"after": "PT1H", "action": "shout"},
                                            {"after": "later", "action": "reassign_group"}]})
    fields = {e["field"] for e in err.value.errors}
    assert fields >= {"name", "target", "warn_ratio", "escalation[0].action", "escalation[1].after",
                      "escalation[1].group"}
    with pytest.raises(InvalidInput):
        SlaPolicy.from_dict({"name": "zero", "target": "PT0S"})  # a target must be positive
    p = SlaPolicy.from_dict({"name": "ok.policy", "target": "P1D", "calendar": "china"})
    assert (p.warn_ratio, p.escalation) == (0.8, ())


def test_business_day_is_one_working_day_across_holidays_and_makeup_days() -> None:
    china = china_calendar([2026])
    day = SlaPolicy.from_dict({"name": "visit", "target": "P1D", "calendar": "china"})
    # National Day 2026: 1-7 October off, so the day after 30 September is 8 October.
    d = due_for(day, sh(2026, 9, 30, 10), china)
    assert d.due == sh(2026, 10, 8, 10)
    # 80 % of the 7.5 working hours in between: 2 h before lunch and 4 h after.
    assert d.warn_at == sh(2026, 9, 30, 17, 30)
    # Labour Day: 1-5 May off.
    assert due_for(day, sh(2026, 4, 30, 15), china).due == sh(2026, 5, 6, 15)
    hours = SlaPolicy.from_dict({"name": "followup", "target": "PT4H", "calendar": "china"})
    # Friday 16:00: 2 h on Friday, then Sunday 20 September is a make-up working day (调休).
    d = due_for(hours, sh(2026, 9, 18, 16), china)
    assert d.due == sh(2026, 9, 20, 11)
    assert d.warn_at == sh(2026, 9, 20, 10, 12)


def test_around_the_clock_and_calendar_months() -> None:
    day = SlaPolicy.from_dict({"name": "hotline", "target": "PT24H"})
    d = due_for(day, sh(2026, 9, 30, 10))
    assert (d.due, d.warn_at) == (sh(2026, 10, 1, 10), sh(2026, 9, 30, 10) + dt.timedelta(hours=19.2))
    revisit = SlaPolicy.from_dict({"name": "revisit", "target": "P1M"})
    assert due_for(revisit, sh(2026, 1, 31, 10)).due == sh(2026, 2, 28, 10)  # calendar months, clamped
    assert due_for(SlaPolicy.from_dict({"name": "r6", "target": "P6M"}), sh(2026, 3, 15, 9)).due == sh(2026, 9, 15, 9)


def test_default_table_covers_every_policy_the_diagrams_name() -> None:
    table = {p["name"]: p for p in json.loads(DEFAULT_POLICY_FILE.read_text(encoding="utf-8"))["policies"]}
    for p in table.values():
        SlaPolicy.from_dict(p)  # every default is valid
    named = set()
    for bpmn in (ROOT / "processes").glob("*.bpmn"):
        text = bpmn.read_text(encoding="utf-8")
        named |= set(re.findall(r'sla_(?:due|cycle)\(\s*["\']([^"\']+)["\']', text))
        named |= set(re.findall(r'name="slaPolicy"\s+value="([^"]+)"', text))
    assert named - table.keys() == set()
    expected = {"inquiry.first_reply": ("PT1H", "24x7"), "inquiry.followup": ("PT4H", "china"),
                "complaint.register": ("PT24H", "24x7"), "dispatch.visit": ("P1D", "china"),
                "survey.expiry": ("P7D", "24x7"), "installation.delivery": ("P3D", "china"),
                "installation.revisit_1m": ("P1M", "24x7"), "installation.revisit_3m": ("P3M", "24x7"),
                "installation.revisit_6m": ("P6M", "24x7"), "emergency.progress": ("PT4H", "24x7"),
                "emergency.notify": ("PT2H", "24x7")}
    assert {n: (table[n]["target"], table[n]["calendar"]) for n in expected} == expected


# --- in cases -----------------------------------------------------------------------------------


def test_sla_due_timer_names_its_policy_version_and_changes_apply_to_later_timers(
        sla_engine: WorkflowEngine, sla: SlaService, db: Any) -> None:
    t0 = dt.datetime(2026, 6, 1, 2, 0, tzinfo=dt.UTC)
    with time_machine.travel(t0, tick=False):
        first = sla_engine.start_case("sla_timer", {}, SYSTEM)
        assert set_policy(db, sla, name="test.wait", target="PT45M").version == 2
        second = sla_engine.start_case("sla_timer", {}, SYSTEM)
    with db.read() as s:
        dues = {t.case_id: t.due_at for t in s.scalars(select(Timer))}
    assert dues == {first["id"]: t0 + dt.timedelta(minutes=30), second["id"]: t0 + dt.timedelta(minutes=45)}
    [note1] = history(sla_engine, first["id"], "sla_due_set")
    [note2] = history(sla_engine, second["id"], "sla_due_set")
    assert (note1["payload"]["policy"], note1["payload"]["version"], note1["payload"]["target"]) == (
        "test.wait", 1, "PT30M")
    assert (note2["payload"]["version"], note2["payload"]["due"]) == (2, (t0 + dt.timedelta(minutes=45)).isoformat())
    with time_machine.travel(t0 + dt.timedelta(minutes=31), tick=False):
        assert sla_engine.fire_due_timers() == 1  # the first case still follows version 1
    assert sla_engine.get_case(first["id"], SYSTEM)["data"]["expired"] is True
    assert sla_engine.get_case(second["id"], SYSTEM)["status"] == "waiting"


def test_sla_cycle_repeats_the_policy_target(sla_engine: WorkflowEngine, sla: SlaService, db: Any) -> None:
    t0 = dt.datetime(2026, 6, 1, 2, 0, tzinfo=dt.UTC)
    with time_machine.travel(t0, tick=False):
        with db.read() as s:
            assert sla.due(s, "test.progress", t0).due == t0 + dt.timedelta(hours=1)
        case = sla_engine.start_case("cycle_catch", {}, SYSTEM)
    [note] = history(sla_engine, case["id"], "sla_due_set")
    assert (note["payload"]["function"], note["payload"]["policy"]) == ("sla_cycle", "test.progress")
    with db.read() as s:
        [timer] = s.scalars(select(Timer).where(Timer.case_id == case["id"]))
    assert (timer.kind, timer.due_at) == ("cycle", t0 + dt.timedelta(hours=1))


def test_task_due_follows_a_business_calendar(sla_engine: WorkflowEngine, sla: SlaService, db: Any) -> None:
    use_china_2026(db, sla)
    set_policy(db, sla, name="test.handle", target="P1D", calendar="china")
    with time_machine.travel(sh(2026, 9, 30, 10), tick=False):
        case = sla_engine.start_case("sla_task", {}, SYSTEM)
    [task] = case["tasks"]
    assert dt.datetime.fromisoformat(task["due"]) == sh(2026, 10, 8, 10)
    assert dt.datetime.fromisoformat(task["warn_at"]) == sh(2026, 9, 30, 17, 30)
    with time_machine.travel(sh(2026, 10, 2, 12), tick=False):  # mid-holiday: still on time
        [listed] = sla_engine.list_tasks(SYSTEM)
        assert (listed["sla_state"], listed["due"]) == ("warning", task["due"])
    [started] = history(sla_engine, case["id"], "sla_started")
    assert (started["payload"]["version"], started["payload"]["calendar"]) == (2, "china")


def test_targets_per_case_priority(sla_engine: WorkflowEngine, sla: SlaService, db: Any) -> None:
    policy = SlaPolicy.from_dict({"name": "p", "target": "PT48H", "priority_targets": {"urgent": "PT24H"}})
    start = sh(2026, 6, 1, 9)
    assert [due_for(policy, start, priority=p).due for p in (None, "normal", "urgent")] == [
        sh(2026, 6, 3, 9), sh(2026, 6, 3, 9), sh(2026, 6, 2, 9)]
    with pytest.raises(InvalidInput) as err:
        SlaPolicy.from_dict({"name": "p", "target": "PT1H", "priority_targets": {"urgent": "soon"}})
    assert err.value.errors[0]["field"] == "priority_targets.urgent"
    assert set_policy(db, sla, name="test.handle", target="PT2H", priority_targets={"urgent": "PT30M"}).version == 2
    t0 = dt.datetime(2026, 6, 1, 1, 0, tzinfo=dt.UTC)
    with time_machine.travel(t0, tick=False):
        urgent = sla_engine.start_case("sla_task", {"priority": "urgent"}, SYSTEM)
        normal = sla_engine.start_case("sla_task", {"priority": "normal"}, SYSTEM)
        expiring = sla_engine.start_case("sla_timer", {}, SYSTEM)
    assert urgent["tasks"][0]["due"] == (t0 + dt.timedelta(minutes=30)).isoformat()
    assert normal["tasks"][0]["due"] == (t0 + dt.timedelta(hours=2)).isoformat()
    [started] = history(sla_engine, urgent["id"], "sla_started")
    assert (started["payload"]["priority"], started["payload"]["target"], started["payload"]["version"]) == (
        "urgent", "PT30M", 2)
    with db.read() as s:
        assert sla.due(s, "test.handle", t0, "urgent").due == t0 + dt.timedelta(minutes=30)
    assert sla_engine.get_case(expiring["id"], SYSTEM)["status"] == "waiting"


def test_calendar_years_are_editable_and_apply_to_later_due_dates(
        sla_engine: WorkflowEngine, sla: SlaService, db: Any) -> None:
    with db.write() as s:
        info = sla.set_calendar(s, "shop", {"timezone": "Asia/Shanghai",
                                            "hours": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu",
                                                                                         "fri")}}, OWNER)
        assert info["version"] == 1
        sla.set_policy(s, {"name": "test.shop", "target": "P1D", "calendar": "shop"}, OWNER)
    start = sh(2027, 3, 4, 10)  # a Thursday
    with db.read() as s:
        assert sla.due(s, "test.shop", start).due == sh(2027, 3, 5, 10)
    with db.write() as s:
        info = sla.set_calendar_year(s, "shop", 2027, ["2027-03-05"], [], OWNER)
    assert info["version"] == 2 and info["years"]["2027"]["holidays"] == ["2027-03-05"]
    with db.read() as s:
        assert sla.due(s, "test.shop", start).due == sh(2027, 3, 8, 10)  # Friday is a holiday now
    with db.write() as s, pytest.raises(InvalidInput):
        sla.set_calendar_year(s, "shop", 2027, ["2028-01-01"], [], OWNER)  # a date of another year
    with db.write() as s, pytest.raises(InvalidInput):
        sla.set_calendar(s, "24x7", {}, OWNER)
    with db.write() as s, pytest.raises(Forbidden):
        sla.set_calendar_year(s, "shop", 2027, [], [], SYSTEM.__class__("agent", frozenset({"hotline"})))


def test_policy_versions_and_unknown_names(sla: SlaService, db: Any) -> None:
    with db.write() as s:
        sla.ensure_defaults(s)
        current = {k: v for k, v in sla.policy(s, "dispatch.contact").to_dict().items()
                   if k not in ("version", "created_at", "created_by")}
        p, changed = sla.set_policy(s, current, OWNER)
        assert not changed and p.version == 1  # same rules: no new version
        p, changed = sla.set_policy(s, {**current, "target": "PT3H"}, OWNER)
        assert changed and p.version == 2 and p.escalation == sla.policy(s, "dispatch.contact", 1).escalation
        assert [v.target for v in sla.versions(s, "dispatch.contact")] == ["PT2H", "PT3H"]
        assert sla.policy(s, "dispatch.contact", 1).target == "PT2H"
        with pytest.raises(NotFound):
            sla.policy(s, "no.such.policy")
        with pytest.raises(InvalidInput):
            sla.set_policy(s, {"name": "x.y", "target": "PT1H", "calendar": "atlantis"}, OWNER)
        assert sla.ensure_defaults(s) == []  # nothing missing any more


def test_default_calendar_gains_the_coming_years_but_keeps_edited_ones(sla: SlaService, db: Any) -> None:
    with db.write() as s:
        sla.ensure_defaults(s, today=dt.date(2026, 3, 1))
        assert sla.calendar_info(s, "china")["years"].keys() == {"2026", "2027"}
        sla.set_calendar_year(s, "china", 2027, ["2027-10-01"], [], OWNER)  # edited by hand
        assert sla.ensure_defaults(s, today=dt.date(2027, 1, 2)) == ["calendar china 2028"]
        years = sla.calendar_info(s, "china")["years"]
        assert years["2027"] == {"holidays": ["2027-10-01"], "makeup_days": []} and "2028" in years
        assert sla.ensure_defaults(s, today=dt.date(2027, 1, 2)) == []


def test_unknown_policy_in_a_diagram_is_an_incident(sla_engine: WorkflowEngine, db: Any) -> None:
    with db.write() as s:
        from engine.sla import SlaPolicyRow

        for row in s.scalars(select(SlaPolicyRow).where(SlaPolicyRow.name == "test.wait")):
            s.delete(row)
    case = sla_engine.start_case("sla_timer", {}, SYSTEM)
    assert case["status"] == "error"
    [incident] = history(sla_engine, case["id"], "incident")
    assert "test.wait" in incident["payload"]["message"]


def test_unknown_policy_on_a_user_task_opens_it_without_a_due_date(sla_engine: WorkflowEngine, db: Any) -> None:
    with db.write() as s:
        from engine.sla import SlaPolicyRow

        for row in s.scalars(select(SlaPolicyRow).where(SlaPolicyRow.name == "test.handle")):
            s.delete(row)
    case = sla_engine.start_case("sla_task", {}, SYSTEM)
    [task] = case["tasks"]
    assert (case["status"], task["due"], task["sla_state"]) == ("running", None, None)
    [missing] = history(sla_engine, case["id"], "sla_policy_missing")
    assert missing["payload"] == {"policy": "test.handle"}


# --- API and CLI --------------------------------------------------------------------------------


def test_api_everyone_reads_owners_change(client: Any) -> None:
    from conftest import token_for

    agent, owner, auditor = (token_for(client, u) for u in ("agent", "owner", "auditor"))
    body = {"target": "PT2H", "calendar": "24x7", "warn_ratio": 0.75,
            "escalation": [{"after": "PT0S", "action": "notify_group", "group": "supervisor"}]}
    assert client.put("/api/sla/policies/dispatch.contact", json=body, headers=agent).status_code == 403
    assert client.put("/api/sla/policies/dispatch.contact", json=body, headers=auditor).status_code == 403
    res = client.put("/api/sla/policies/dispatch.contact", json=body, headers=owner)
    assert res.status_code == 201 and res.get_json()["version"] == 1
    res = client.put("/api/sla/policies/dispatch.contact",
                     json={**body, "target": "PT3H", "priority_targets": {"urgent": "PT1H"}}, headers=owner)
    assert res.status_code == 200 and res.get_json()["version"] == 2
    assert res.get_json()["priority_targets"] == {"urgent": "PT1H"}
    bad = client.put("/api/sla/policies/dispatch.contact", json={**body, "target": "2 hours"}, headers=owner)
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "target"
    listed = client.get("/api/sla/policies", headers=agent).get_json()
    assert [(p["name"], p["target"], p["version"]) for p in listed] == [("dispatch.contact", "PT3H", 2)]
    one = client.get("/api/sla/policies/dispatch.contact", headers=agent).get_json()
    assert [v["target"] for v in one["versions"]] == ["PT2H", "PT3H"]
    assert client.get("/api/sla/policies/nope", headers=agent).status_code == 404
    assert client.get("/api/sla/policies").status_code == 401

    year = {"holidays": ["2027-10-01", "2027-10-02"], "makeup_days": ["2027-09-26"]}
    assert client.put("/api/sla/calendars/china/years/2027", json=year, headers=agent).status_code == 403
    res = client.put("/api/sla/calendars/china/years/2027", json=year, headers=owner)
    assert res.status_code == 200 and res.get_json()["years"]["2027"] == {
        "holidays": ["2027-10-01", "2027-10-02"], "makeup_days": ["2027-09-26"]}
    names = [c["name"] for c in client.get("/api/sla/calendars", headers=agent).get_json()]
    assert names == ["24x7", "china"]
    assert client.put("/api/sla/calendars/24x7", json={}, headers=owner).status_code == 422
    paths = client.get("/api/openapi.json").get_json()["paths"]
    assert {"/api/sla/policies", "/api/sla/policies/{name}", "/api/sla/calendars/{name}/years/{year}"} <= set(paths)


def test_cli_lists_and_sets_policies_and_calendar_years(app: Any) -> None:
    from app import cli

    runner = app.test_cli_runner()
    svc = app.extensions["aftercare"]
    with svc.db.write() as s:
        svc.sla.ensure_defaults(s)
    result = runner.invoke(cli, ["sla", "list"])
    assert result.exit_code == 0 and "survey.expiry" in result.output and "P7D" in result.output
    result = runner.invoke(cli, ["sla", "set", "survey.expiry", "--target", "P10D"])
    assert result.exit_code == 0 and "version 2" in result.output, result.output
    shown = json.loads(runner.invoke(cli, ["sla", "show", "survey.expiry"]).output)
    assert [v["target"] for v in shown] == ["P7D", "P10D"]
    assert shown[1]["escalation"] == shown[0]["escalation"]  # unspecified fields keep their value
    result = runner.invoke(cli, ["sla", "set", "survey.expiry", "--priority-target", "urgent=P3D"])
    assert result.exit_code == 0 and "version 3" in result.output, result.output
    assert "urgent:P3D" in runner.invoke(cli, ["sla", "list"]).output
    result = runner.invoke(cli, ["sla", "set", "survey.expiry", "--warn-ratio", "3"])
    assert result.exit_code == 1 and "warn_ratio" in result.output
    result = runner.invoke(cli, ["calendar", "set-year", "china", "2030", "--holiday", "2030-10-01",
                                 "--makeup", "2030-09-29"])
    assert result.exit_code == 0 and "1 holidays, 1 make-up days" in result.output, result.output
    shown = json.loads(runner.invoke(cli, ["calendar", "show", "china", "--year", "2030"]).output)
    assert shown["years"] == {"2030": {"holidays": ["2030-10-01"], "makeup_days": ["2030-09-29"]}}
