"""The staff web app in a real browser: sign in, find a task, correct a form, complete it, watch the
case diagram move on; a process owner renames a task in the modeler and deploys version 2; the
language switch. Screens of the inbox, a task and a case are kept in test-artifacts/screens/."""

from __future__ import annotations

import re
from typing import Any

from engine import SYSTEM

from .support import LiveServer, artifacts_dir, sign_in


def screens() -> Any:
    folder = artifacts_dir() / "screens"
    folder.mkdir(exist_ok=True)
    return folder


def set_due(live_server: LiveServer, minutes_by_task: dict[str, int]) -> None:
    """Give tasks a due time (as the SLA module would), opened an hour ago."""
    import datetime as dt

    from engine.models import OpenTask

    now = dt.datetime.now(dt.UTC)
    with live_server.app.extensions["aftercare"].db.write() as s:
        for task_id, minutes in minutes_by_task.items():
            row = s.get(OpenTask, task_id)
            row.created_at = now - dt.timedelta(hours=1)
            row.due_at = now + dt.timedelta(minutes=minutes)


def no_csp_violations(page: Any) -> None:
    blocked = [m for m in page.console_errors if "Content Security Policy" in m]
    assert not blocked, blocked


def test_agent_fixes_a_form_mistake_completes_the_task_and_sees_the_next_step(page: Any,
                                                                              live_server: LiveServer) -> None:
    case = live_server.engine.start_case("sample", {"case_ref": "B-1001", "customer_name": "王芳",
                                                    "customer_phone": "13812345678"}, SYSTEM)
    others = [live_server.engine.start_case("sample", {"case_ref": f"B-20{i:02d}", "customer_name": f"客户{i}",
                                                       "customer_phone": f"1390000{i:04d}"}, SYSTEM)
              for i in range(6)]  # some company in the inbox, three of them with a due time
    set_due(live_server, {others[0]["tasks"][0]["id"]: -30, others[1]["tasks"][0]["id"]: 5,
                          others[2]["tasks"][0]["id"]: 600})
    sign_in(page, "agent")
    assert page.locator("h1").inner_text() == "待办"
    for state, words in (("breached", "已超时"), ("warning", "预警"), ("on_time", "按时")):
        badge = page.locator(f".sla.sla-{state}").first
        assert badge.inner_text().strip() == words  # colour (class) and words

    page.fill("#q", "B-1001")
    page.press("#q", "Enter")
    rows = page.locator("table.inbox-table tbody tr")
    assert rows.count() == 1
    page.screenshot(path=str(screens() / "inbox-search.png"))
    page.fill("#q", "")
    page.press("#q", "Enter")
    page.screenshot(path=str(screens() / "inbox.png"), full_page=True)
    page.goto("/?q=B-1001")
    page.click("a.task-link")
    assert re.search(r"/tasks/[0-9a-f-]+$", page.url)

    page.fill("input[name=customer]", "Ann Lee")
    page.select_option("select[name=severity]", "low")
    page.fill("input[name=email]", "not-an-email")
    page.click("#complete")
    error = page.locator("#f-email-error")
    error.wait_for()
    assert "电子邮件" in error.inner_text()
    assert page.input_value("input[name=customer]") == "Ann Lee"  # what was typed is still there
    assert page.input_value("input[name=email]") == "not-an-email"
    assert page.locator("#error-summary").is_visible()
    page.screenshot(path=str(screens() / "task-with-error.png"), full_page=True)

    page.fill("input[name=email]", "ann@example.com")
    page.click("#complete")
    page.wait_for_url(f"**/instances/{case['id']}")
    page.wait_for_selector("#diagram[data-loaded]")
    page.wait_for_selector('g.djs-element.case-active[data-element-id="fix"]')
    assert page.locator('g.djs-element.case-completed[data-element-id="register"]').count() == 1
    assert page.locator('g.djs-element.case-active[data-element-id="register"]').count() == 0
    page.screenshot(path=str(screens() / "case.png"), full_page=True)
    no_csp_violations(page)


def test_task_page_screen(page: Any, live_server: LiveServer) -> None:
    """A task with context: the data so far, earlier answers and history beside the form."""
    case = live_server.engine.start_case("sample", {"case_ref": "B-3001", "customer_name": "李雷",
                                                    "customer_phone": "13700001234",
                                                    "customer_address": "广州市天河区体育西路1号"}, SYSTEM)
    live_server.engine.complete_task(case["tasks"][0]["id"], {"customer": "李雷", "severity": "low"}, SYSTEM)
    fix = live_server.engine.get_case(case["id"], SYSTEM)["tasks"][0]
    sign_in(page, "tech")
    page.goto(f"/tasks/{fix['id']}")
    page.click("#claim")
    page.wait_for_selector("#unclaim")
    page.click("[data-add-row]")  # a second row of parts
    assert page.locator("table.rows-table tbody tr").count() == 2
    page.fill("input[name='parts.0.part']", "压缩机 C-35")
    page.fill("input[name='parts.0.quantity']", "1")
    page.fill("input[name='parts.1.part']", "电容 4μF")
    page.fill("input[name='parts.1.quantity']", "0")
    page.click("#complete")
    page.locator("[id='f-parts-1-quantity-error']").wait_for()
    assert page.input_value("input[name='parts.1.part']") == "电容 4μF"
    page.screenshot(path=str(screens() / "task.png"), full_page=True)
    page.fill("input[name='parts.1.quantity']", "2")
    page.check("#f-fixed")
    page.click("#complete")
    page.wait_for_url(lambda url: "/tasks/" not in url or "fix" not in url)
    data = live_server.engine.get_case(case["id"], SYSTEM)["data"]
    assert data["parts"] == [{"part": "压缩机 C-35", "quantity": 1}, {"part": "电容 4μF", "quantity": 2}]
    no_csp_violations(page)


def test_process_owner_renames_a_task_in_the_modeler_and_deploys_version_2(page: Any,
                                                                           live_server: LiveServer) -> None:
    sign_in(page, "owner")
    page.goto("/processes/sample")
    before = live_server.engine.get_process("sample")["versions"][-1]["version"]
    page.click("#open-modeler")
    page.wait_for_selector("#modeler[data-loaded]")
    page.click('g.djs-element[data-element-id="fix"]')
    name = page.locator("#prop-name")
    assert name.input_value() == "Fix product"
    name.fill("Repair the product")
    page.click("#deploy")
    deployed = page.locator(f'#deploy-result .am-deployed[data-version="{before + 1}"]')
    deployed.wait_for()
    page.click("#back-to-process")
    assert page.locator("h1").inner_text().endswith(f"v{before + 1}")
    assert page.locator("#versions tbody tr").count() == before + 1
    _name, xml = live_server.engine.get_bpmn("sample", before + 1)
    assert 'name="Repair the product"' in xml
    page.screenshot(path=str(screens() / "process.png"), full_page=True)
    no_csp_violations(page)


def test_language_switch(page: Any, live_server: LiveServer) -> None:
    page.goto("/login")
    assert page.locator("h1").inner_text() == "登录售后服务系统"
    page.click("a[data-lang=en]")
    assert page.locator("h1").inner_text() == "Sign in to Aftercare"
    sign_in(page, "boss")
    assert page.locator("nav.mainnav").inner_text().split()[:2] == ["Inbox", "New"]
    page.click("a[data-lang=zh]")
    assert "团队看板" in page.locator("nav.mainnav").inner_text()
    page.goto("/board")
    assert page.locator("h1").inner_text() == "团队看板"
    no_csp_violations(page)


def test_customer_pages_are_styled_from_a_file_under_a_strict_policy(page: Any, live_server: LiveServer) -> None:
    """The customer pages' layout comes from a style sheet file: the policy allows no inline style."""
    for path in ("/intake", "/standards"):
        page.goto(path)
        card = page.locator(".public-card").first
        card.wait_for()
        rem = card.evaluate("el => parseFloat(getComputedStyle(el).maxWidth)"
                            " / parseFloat(getComputedStyle(document.documentElement).fontSize)")
        assert rem == 46, path  # public.css's 46rem applied
    no_csp_violations(page)
