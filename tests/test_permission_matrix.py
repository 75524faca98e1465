"""Who may do what: every route of the app (API and pages, from its url_map) × every built-in group,
a hotline agent and an anonymous caller; the expected status of each is written down once in
MATRIX below and compared with what the server answers.

Columns: admin, process-owner, auditor, supervisor, staff (no other group), hotline agent, anonymous.
API requests carry a bearer token; pages a signed-in session with its CSRF token (CSRF itself is
tested in test_web_security.py). State-changing requests get a fresh case each, so one caller's
command never changes what the next one sees. Path parameters are real: a running case of the
``sample`` procedure (its first task lies in the hotline lane), the ``sample`` process, a form.
Statuses other than 401/403/302-to-login mean "let in"; the table is exact so a change in either
direction is noticed, and a column being more permissive than written is a bug."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, SAMPLES

from engine import SYSTEM

ROLES = ("admin", "owner", "auditor", "boss", "nobody", "agent", None)
COLUMNS = "admin owner auditor supervisor staff hotline anon"

# rule, method: expected status per column (admin owner auditor supervisor staff hotline anon).
# Reading the table: 409/422 mean "let in, then refused on the request's merits" (the case is not in
# error, the body is incomplete). Customers are readable by all staff but masked for roles that do not
# need contact details (web.case_view.sees_personal_data); process owners read cases but work no tasks;
# the case's first task lies in the hotline lane, so the plain staff member neither sees nor works it.
MATRIX: dict[tuple[str, str], tuple[int, ...]] = {
    # --- REST API (bearer token) -------------------------------------------------------------------
    ('/api/audit/access', 'GET'):                              (200, 403, 200, 403, 403, 403, 401),
    ('/api/audit/head', 'GET'):                                (200, 403, 200, 403, 403, 403, 401),
    ('/api/auth/token', 'DELETE'):                             (204, 204, 204, 204, 204, 204, 401),
    ('/api/auth/token', 'POST'):                               (422, 422, 422, 422, 422, 422, 422),
    ('/api/customers', 'GET'):                                 (200, 200, 200, 200, 200, 200, 401),
    ('/api/customers/<int:customer_id>', 'GET'):               (200, 200, 200, 200, 200, 200, 401),
    ('/api/forms/<name>', 'GET'):                              (200, 200, 200, 200, 200, 200, 401),
    ('/api/instances', 'POST'):                                (201, 201, 403, 201, 201, 201, 401),
    ('/api/instances/<int:case_id>', 'GET'):                   (200, 200, 200, 200, 403, 200, 401),
    ('/api/instances/<int:case_id>/at/<int:seq>', 'GET'):      (200, 200, 200, 200, 403, 200, 401),
    ('/api/instances/<int:case_id>/cancel', 'POST'):           (200, 403, 403, 200, 403, 403, 401),
    ('/api/instances/<int:case_id>/export', 'GET'):            (200, 403, 200, 403, 403, 403, 401),
    ('/api/instances/<int:case_id>/history', 'GET'):           (200, 200, 200, 200, 403, 200, 401),
    ('/api/instances/<int:case_id>/retry', 'POST'):            (409, 409, 403, 409, 403, 409, 401),
    ('/api/instances/<int:case_id>/verify', 'GET'):            (200, 200, 200, 200, 403, 200, 401),
    ('/api/intake', 'POST'):                                   (422, 422, 422, 422, 422, 422, 422),
    ('/api/me', 'GET'):                                        (200, 200, 200, 200, 200, 200, 401),
    ('/api/messages', 'POST'):                                 (202, 202, 403, 202, 202, 202, 401),
    ('/api/notifications', 'GET'):                             (200, 200, 200, 200, 200, 200, 401),
    ('/api/openapi.json', 'GET'):                              (200, 200, 200, 200, 200, 200, 200),
    ('/api/processes', 'GET'):                                 (200, 200, 200, 200, 200, 200, 401),
    ('/api/processes', 'POST'):                                (201, 201, 403, 403, 403, 403, 401),
    ('/api/processes/<key>', 'GET'):                           (200, 200, 200, 200, 200, 200, 401),
    ('/api/processes/<key>/bpmn', 'GET'):                      (200, 200, 200, 200, 200, 200, 401),
    ('/api/procurement', 'GET'):                               (200, 403, 403, 200, 403, 403, 401),
    ('/api/procurement/<int:request_id>/receive', 'POST'):     (200, 403, 403, 403, 403, 403, 401),
    ('/api/reports/kpis', 'GET'):                              (200, 200, 200, 200, 403, 403, 401),
    ('/api/reports/kpis/<kpi>/cases', 'GET'):                  (200, 200, 200, 200, 403, 403, 401),
    ('/api/reports/monthly/<month>', 'GET'):                   (200, 200, 200, 200, 403, 403, 401),
    ('/api/reports/quarterly/<quarter>', 'GET'):               (200, 200, 200, 200, 403, 403, 401),
    ('/api/reports/technicians', 'GET'):                       (200, 200, 200, 200, 403, 403, 401),
    ('/api/reports/trends', 'GET'):                            (200, 200, 200, 200, 403, 403, 401),
    ('/api/sla/calendars', 'GET'):                             (200, 200, 200, 200, 200, 200, 401),
    ('/api/sla/calendars/<name>', 'GET'):                      (200, 200, 200, 200, 200, 200, 401),
    ('/api/sla/calendars/<name>', 'PUT'):                      (200, 200, 403, 403, 403, 403, 401),
    ('/api/sla/calendars/<name>/years/<int:year>', 'PUT'):     (200, 200, 403, 403, 403, 403, 401),
    ('/api/sla/compliance', 'GET'):                            (200, 200, 200, 200, 200, 200, 401),
    ('/api/sla/policies', 'GET'):                              (200, 200, 200, 200, 200, 200, 401),
    ('/api/sla/policies/<name>', 'GET'):                       (404, 404, 404, 404, 404, 404, 401),
    ('/api/sla/policies/<name>', 'PUT'):                       (422, 422, 403, 403, 403, 403, 401),
    ('/api/tasks', 'GET'):                                     (200, 200, 200, 200, 200, 200, 401),
    ('/api/tasks/<task_id>', 'GET'):                           (200, 403, 200, 200, 403, 200, 401),
    ('/api/tasks/<task_id>/assign', 'POST'):                   (200, 403, 403, 200, 403, 403, 401),
    ('/api/tasks/<task_id>/claim', 'POST'):                    (200, 403, 403, 200, 403, 200, 401),
    ('/api/tasks/<task_id>/complete', 'POST'):                 (422, 403, 403, 422, 403, 422, 401),
    ('/api/tasks/<task_id>/draft', 'POST'):                    (200, 403, 403, 200, 403, 200, 401),
    ('/api/tasks/<task_id>/unclaim', 'POST'):                  (200, 403, 403, 200, 403, 200, 401),
    # --- pages (signed-in session; 302 = sent to the sign-in page) -------------------------------
    ('/', 'GET'):                                              (200, 200, 302, 200, 200, 200, 302),
    ('/audit', 'GET'):                                         (200, 403, 200, 200, 403, 403, 302),
    ('/board', 'GET'):                                         (200, 403, 403, 200, 403, 403, 302),
    ('/board/assign', 'POST'):                                 (302, 403, 403, 302, 403, 403, 302),
    ('/forms/<name>/edit', 'GET'):                             (200, 200, 403, 403, 403, 403, 302),
    ('/forms/<name>/edit', 'POST'):                            (302, 302, 403, 403, 403, 403, 302),
    ('/forms/preview', 'POST'):                                (200, 200, 403, 403, 403, 403, 302),
    ('/healthz', 'GET'):                                       (200, 200, 200, 200, 200, 200, 200),
    ('/instances/<int:case_id>', 'GET'):                       (200, 200, 200, 200, 403, 200, 302),
    ('/instances/<int:case_id>/cancel', 'POST'):               (302, 403, 403, 302, 403, 403, 302),
    ('/instances/<int:case_id>/retry', 'POST'):                (409, 409, 403, 409, 403, 409, 302),
    ('/instances/<int:case_id>/verify', 'GET'):                (200, 200, 200, 200, 403, 200, 302),
    ('/instances/<int:case_id>/at/<int:seq>', 'GET'):          (200, 200, 200, 200, 403, 200, 302),
    ('/instances/new', 'GET'):                                 (200, 403, 403, 200, 403, 200, 302),
    ('/instances/new', 'POST'):                                (302, 403, 403, 302, 403, 302, 302),
    ('/intake', 'GET'):                                        (200, 200, 200, 200, 200, 200, 200),
    ('/intake', 'POST'):                                       (422, 422, 422, 422, 422, 422, 403),
    ('/lang/<code>', 'GET'):                                   (302, 302, 302, 302, 302, 302, 302),
    ('/metrics', 'GET'):                                       (200, 403, 403, 200, 403, 403, 401),
    ('/processes', 'GET'):                                     (200, 200, 200, 200, 403, 403, 302),
    ('/processes', 'POST'):                                    (302, 302, 403, 403, 403, 403, 302),
    ('/processes/<key>', 'GET'):                               (200, 200, 200, 200, 403, 403, 302),
    ('/processes/<key>/modeler', 'GET'):                       (200, 200, 403, 403, 403, 403, 302),
    ('/processes/new/modeler', 'GET'):                         (200, 200, 403, 403, 403, 403, 302),
    ('/reports', 'GET'):                                       (200, 200, 200, 200, 403, 403, 302),
    ('/reports/kpi/<kpi>', 'GET'):                             (200, 200, 200, 200, 403, 403, 302),
    ('/reports/monthly/<month>', 'GET'):                       (200, 200, 200, 200, 403, 403, 302),
    ('/reports/quarterly/<quarter>', 'GET'):                   (200, 200, 200, 200, 403, 403, 302),
    ('/sla', 'GET'):                                           (200, 200, 200, 200, 403, 403, 302),
    ('/sla', 'POST'):                                          (422, 422, 403, 403, 403, 403, 302),
    ('/sla/calendar', 'POST'):                                 (422, 422, 403, 403, 403, 403, 302),
    ('/standards', 'GET'):                                     (200, 200, 200, 200, 200, 200, 200),
    ('/stock', 'GET'):                                         (200, 403, 403, 200, 403, 403, 302),
    ('/stock/<int:request_id>/receive', 'POST'):               (302, 403, 403, 403, 403, 403, 302),
    ('/static/<path:filename>', 'GET'):                        (200, 200, 200, 200, 200, 200, 200),
    ('/survey/<token>', 'GET'):                                (404, 404, 404, 404, 404, 404, 404),
    ('/survey/<token>', 'POST'):                               (404, 404, 404, 404, 404, 404, 404),
    ('/tasks/<task_id>', 'GET'):                               (200, 403, 200, 200, 403, 200, 302),
    ('/tasks/<task_id>', 'POST'):                              (302, 403, 403, 302, 403, 302, 302),
    ('/tasks/<task_id>/claim', 'POST'):                        (302, 403, 403, 302, 403, 302, 302),
    ('/tasks/<task_id>/unclaim', 'POST'):                      (302, 403, 403, 302, 403, 302, 302),
    ('/login', 'GET'):                                         (302, 302, 302, 302, 302, 302, 200),
    ('/login', 'POST'):                                        (401, 401, 401, 401, 401, 401, 403),
    ('/logout', 'POST'):                                       (302, 302, 302, 302, 302, 302, 302),
}


def _fill(rule: str, values: dict[str, str]) -> str:
    if "/sla/" in rule:
        values = {**values, "name": "matrix"}
    return re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: values[m.group(2)], rule)


class Caller:
    """One client per role: a bearer token for the API and a signed-in session for the pages."""

    def __init__(self, app: Any, username: str | None) -> None:
        self.username = username
        self.api = app.test_client()
        self.pages = app.test_client()
        self.bearer: dict[str, str] = {}
        self.csrf = ""
        if username is None:
            return
        res = self.api.post("/api/auth/token", json={"username": username, "password": PASSWORD})
        assert res.status_code == 200, res.get_json()
        self.bearer = {"Authorization": f"Bearer {res.get_json()['token']}"}
        page = self.pages.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        res = self.pages.post("/login", data={"username": username, "password": PASSWORD, "csrf_token": token})
        assert res.status_code == 302
        self.csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"',  # type: ignore[union-attr]
                              self.pages.get("/", follow_redirects=True).get_data(as_text=True)).group(1)


JSON_BODY = {"process": "sample", "name": "customer_reply", "correlation": {}, "data": {}, "reason": "matrix",
             "assignee": "agent", "target": "PT1H", "holidays": [], "makeup_days": [], "calendar": "always"}


def _request(caller: Caller, method: str, rule: str, url: str, task_id: str) -> int:
    if rule.startswith("/api/"):
        if rule == "/api/auth/token" and method == "DELETE":  # revokes a token of its own, not the caller's
            fresh = caller.api.post(rule, json={"username": caller.username, "password": PASSWORD}).get_json()
            bearer = {"Authorization": f"Bearer {fresh['token']}"} if caller.username else {}
            return caller.api.delete(url, headers=bearer).status_code
        if method == "GET":
            return caller.api.get(url, headers=caller.bearer).status_code
        if rule == "/api/processes":
            return caller.api.post(url, headers=caller.bearer, content_type="multipart/form-data",
                                   data={"files": (io.BytesIO((SAMPLES / "sample.bpmn").read_bytes()),
                                                   "sample.bpmn")}).status_code
        return caller.api.open(url, method=method, headers=caller.bearer, json=JSON_BODY).status_code
    if method == "GET":
        res = caller.pages.get(url)
    elif rule == "/login":  # a wrong password, by the caller (anonymous: no CSRF token either)
        res = caller.pages.post(url, data={"csrf_token": caller.csrf, "username": caller.username or "x",
                                           "password": "not the password"})
    elif rule == "/processes":
        res = caller.pages.post(url, content_type="multipart/form-data",
                                data={"csrf_token": caller.csrf,
                                      "files": (io.BytesIO((SAMPLES / "sample.bpmn").read_bytes()), "sample.bpmn")})
    else:
        res = caller.pages.post(url, data={"csrf_token": caller.csrf, "reason": "matrix", "assignee": "agent",
                                           "task_id": task_id, "process": "sample", "schema": "{}", "policies": "[]"})
    if res.status_code == 302 and "/login" in res.headers.get("Location", ""):
        return 302
    return res.status_code


@pytest.fixture
def app(db_url: str, handlers: Any) -> Iterator[Any]:
    from app import create_app

    application = create_app({"DATABASE_URL": db_url, "SECRET_KEY": "test-secret", "TESTING": True,
                              "HANDLER_REGISTRY": handlers, "SCHEDULER": "off", "INTAKE_RATE_LIMIT": 1000})
    yield application
    application.extensions["aftercare"].db.dispose()


@pytest.fixture
def world(app: Any, client: Any) -> dict[str, Any]:
    from handlers.models import Customer

    svc = app.extensions["aftercare"]
    case = svc.engine.start_case("sample", {}, SYSTEM)
    with svc.db.write() as s:
        customer = Customer(name="王芳", phone="13912345678", address="北京市朝阳区建国路 88 号")
        s.add(customer)
        s.flush()
        customer_id = customer.id
    callers = [Caller(app, r) for r in ROLES]
    assert callers[0].api.put("/api/sla/calendars/matrix", headers=callers[0].bearer,
                              json=JSON_BODY).status_code == 200
    return {"engine": svc.engine, "case": case, "callers": callers, "customer_id": str(customer_id)}


def _procurement_request(world: dict[str, Any]) -> str:
    """An open procurement request (no case): booking it in changes only the stock."""
    import datetime as dt

    from handlers.models import Warehouse
    from handlers.parts import create_request

    with world["engine"].db.write() as s:
        if s.get(Warehouse, "WH-MATRIX") is None:
            s.add(Warehouse(code="WH-MATRIX", name="matrix"))
        req = create_request(s, [{"part": "P-MATRIX", "quantity": 1}], "reorder", dt.datetime.now(dt.UTC),
                             location="WH-MATRIX")
        return str(req.id)


def _values(world: dict[str, Any], fresh: bool) -> dict[str, str]:
    case = world["engine"].start_case("sample", {}, SYSTEM) if fresh else world["case"]
    return {"case_id": str(case["id"]), "seq": "1", "task_id": case["tasks"][0]["id"], "key": "sample",
            "name": "sample-register.schema.json", "kpi": "satisfaction", "month": "2026-03", "quarter": "2026-Q1",
            "customer_id": world["customer_id"], "year": "2026", "token": "no-such-survey-token-000000000000",
            "code": "en", "filename": "css/app.css", "request_id": _procurement_request(world) if fresh else "0"}


def test_permission_matrix(app: Any, world: dict[str, Any]) -> None:
    actual: dict[tuple[str, str], tuple[int, ...]] = {}
    # signing in and out last: they change the callers' sessions
    last = {"/login", "/logout"}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule in last, r.rule)):
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            row: list[int] = []
            values = _values(world, fresh=method != "GET")
            for caller in world["callers"]:
                url = _fill(rule.rule, values)
                row.append(_request(caller, method, rule.rule, url, values["task_id"]))
                # a command that went through may have changed the case: the next caller gets a fresh one
                if method != "GET" and (row[-1] < 300 or (row[-1] == 302 and caller.username)):
                    values = _values(world, fresh=True)
            actual[(rule.rule, method)] = tuple(row)
    if os.environ.get("AFTERCARE_PRINT_MATRIX"):
        for (rule, method), row in actual.items():
            print(f"    ({rule!r}, {method!r}): {row},")
    missing = set(actual) - set(MATRIX)
    assert not missing, f"routes without an expected row: {sorted(missing)}"
    stale = set(MATRIX) - set(actual)
    assert not stale, f"rows for routes that no longer exist: {sorted(stale)}"
    wrong = {k: (MATRIX[k], actual[k]) for k in MATRIX if MATRIX[k] != actual[k]}
    assert not wrong, "expected vs actual (" + COLUMNS + "):\n" + "\n".join(
        f"{m} {r}: {e} != {a}" for (r, m), (e, a) in sorted(wrong.items()))
