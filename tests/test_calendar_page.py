"""Process owners edit a business calendar's year (holidays and make-up days) in the browser."""

from __future__ import annotations

import re
from typing import Any

from conftest import PASSWORD


def signed_in(client: Any, username: str) -> str:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"username": username, "password": PASSWORD, "csrf_token": token}).status_code \
        in (302, 303)
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/sla").get_data(as_text=True)).group(1)


def test_owner_edits_a_calendar_year(client: Any, app: Any) -> None:
    svc = app.extensions["aftercare"]
    with svc.db.write() as s:
        svc.sla.set_calendar_year(s, "china", 2031, ["2031-01-01"], [], _owner(app))
    token = signed_in(client, "owner")
    page = client.get("/sla").get_data(as_text=True)
    assert 'id="calendar-year-form"' in page
    res = client.post("/sla/calendar", data={"csrf_token": token, "cal_name": "china", "cal_year": "2031",
                                              "cal_holidays": "2031-01-01\n2031-10-01", "cal_makeup": "2031-09-27"})
    assert res.status_code in (302, 303)
    with svc.db.read() as s:
        year = svc.sla.calendar_info(s, "china")["years"]["2031"]
    assert year["holidays"] == ["2031-01-01", "2031-10-01"] and year["makeup_days"] == ["2031-09-27"]
    bad = client.post("/sla/calendar", data={"csrf_token": token, "cal_name": "china", "cal_year": "2031",
                                              "cal_holidays": "2031-13-45", "cal_makeup": ""})
    assert bad.status_code == 422 and "field-error" in bad.get_data(as_text=True)
    with svc.db.read() as s:  # unchanged by the rejected form
        assert svc.sla.calendar_info(s, "china")["years"]["2031"]["holidays"] == ["2031-01-01", "2031-10-01"]


def test_supervisors_see_calendars_but_cannot_edit(client: Any) -> None:
    token = signed_in(client, "boss")
    assert 'id="calendar-year-form"' not in client.get("/sla").get_data(as_text=True)
    res = client.post("/sla/calendar", data={"csrf_token": token, "cal_name": "china", "cal_year": "2031",
                                              "cal_holidays": "", "cal_makeup": ""})
    assert res.status_code == 403


def _owner(app: Any) -> Any:
    from engine.identity import actor_for_username

    with app.extensions["aftercare"].db.read() as s:
        return actor_for_username(s, "owner")
