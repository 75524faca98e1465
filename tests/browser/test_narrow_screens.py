"""Staff pages on a phone-sized screen (390 px wide): no page scrolls sideways (wide tables scroll
inside their own wrapper), the header wraps into a usable layout (the user name and Sign out stay on
screen, the app name is not broken one character per line). On a desktop the header stays one row.
Screens are kept in test-artifacts/screens/narrow-*.png."""

from __future__ import annotations

import re
from typing import Any

import pytest

from engine import SYSTEM

from .support import LiveServer, artifacts_dir, sign_in

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}

# What sticks out past the right edge of the viewport (for the failure message), skipping what sits
# inside an element that scrolls on its own (unless absolutely positioned: its containing block may be
# outside the scroller, as with visually hidden table header text).
_OVERFLOW_JS = """() => {
  const vw = window.innerWidth, out = [];
  const scrolls = el => { for (let p = el.parentElement; p; p = p.parentElement) {
    const o = getComputedStyle(p).overflowX; if (o === 'auto' || o === 'scroll' || o === 'hidden') return true; }
    return false; };
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    const free = ['absolute', 'fixed'].includes(getComputedStyle(el).position);
    if (r.width && r.right > vw + 1 && (free || !scrolls(el))) {
      const cls = typeof el.className === 'string' ? el.className.trim().split(/\\s+/).join('.') : '';
      out.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (cls ? '.' + cls : '') +
               ' right=' + Math.round(r.right));
    }
  }
  return out.slice(0, 12);
}"""


def screens() -> Any:
    folder = artifacts_dir() / "screens"
    folder.mkdir(exist_ok=True)
    return folder


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "inbox"


def _staff_context(browser: Any, live_server: LiveServer, viewport: dict[str, int]) -> Any:
    context = browser.new_context(base_url=live_server.url, locale="zh-CN", viewport=viewport,
                                  extra_http_headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    context.set_default_timeout(15_000)
    return context


@pytest.fixture(scope="module")
def cases(live_server: LiveServer) -> dict[str, Any]:
    """Cases with a few steps done: one waiting at the technician's repair, more in the inbox."""
    engine = live_server.engine
    main = engine.start_case("sample", {"case_ref": "N-1001", "customer_name": "王芳",
                                        "customer_phone": "13812345678",
                                        "customer_address": "广州市天河区体育西路1号"}, SYSTEM)
    engine.complete_task(main["tasks"][0]["id"], {"customer": "王芳", "severity": "low",
                                                  "email": "wang.fang@example.com"}, SYSTEM)
    for i in range(4):
        other = engine.start_case("sample", {"case_ref": f"N-20{i:02d}", "customer_name": f"客户{i}",
                                             "customer_phone": f"1390000{i:04d}"}, SYSTEM)
        engine.complete_task(other["tasks"][0]["id"], {"customer": f"客户{i}", "severity": "low"}, SYSTEM)
    case = engine.get_case(main["id"], SYSTEM)
    assert any(t["name"] for t in case["tasks"]), case  # waiting at a user task: the board has rows
    return {"case": case}


def _widest_change_seq(page: Any, live_server: LiveServer, case_id: Any) -> int:
    """The event of the case whose change table is widest (at the current viewport)."""
    widest, best = -1, 1
    for event in live_server.engine.history(case_id, SYSTEM):
        page.goto(f"/instances/{case_id}/at/{event['seq']}")
        table = page.locator("table#data-diff")
        if table.count():
            width = table.evaluate("el => el.scrollWidth")
            if width > widest:
                widest, best = width, event["seq"]
    assert widest > 0, "no event of the case changed its data"
    return best


def _check_phone_page(page: Any, path: str, role: str) -> None:
    page.goto(path)
    page.wait_for_load_state("load")
    assert "/login" not in page.url, f"{role} was sent to sign in from {path}"
    page.screenshot(path=str(screens() / f"narrow-{role}-{_slug(path)}.png"), full_page=True)
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    if width[0] > width[1] + 1:
        pytest.fail(f"{role} {path}: the page scrolls sideways (scrollWidth {width[0]} > {width[1]}); "
                    f"wide: {page.evaluate(_OVERFLOW_JS)}")

    sign_out = page.locator("header.topbar form button[type=submit]")
    assert sign_out.is_visible(), f"{role} {path}: no Sign out"
    box = sign_out.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width[1] + 1, \
        f"{role} {path}: Sign out off screen: {box}"
    who = page.locator("header.topbar .whoami").bounding_box()
    assert who is not None and who["x"] >= 0 and who["x"] + who["width"] <= width[1] + 1, \
        f"{role} {path}: user name off screen: {who}"

    brand = page.locator("header.topbar .brand-name")
    height, line = brand.evaluate("el => [el.getBoundingClientRect().height,"
                                  " parseFloat(getComputedStyle(el).lineHeight)"
                                  " || parseFloat(getComputedStyle(el).fontSize) * 1.5]")
    assert height <= 3 * line + 1, f"{role} {path}: the app name wraps ({height}px for lines of {line}px)"

    # the menu: every link readable on one line (wrapping or scrolling within the menu is fine)
    for link in page.locator("nav.mainnav a").all():
        h, lh = link.evaluate("el => { const r = document.createRange(); r.selectNodeContents(el);"
                              " return [r.getBoundingClientRect().height,"
                              " parseFloat(getComputedStyle(el).lineHeight)"
                              " || parseFloat(getComputedStyle(el).fontSize) * 1.5]; }")
        assert h <= 1.6 * lh, f"{role} {path}: menu item {link.inner_text()!r} wraps ({h}px, lines of {lh}px)"


@pytest.mark.parametrize("role", ["boss", "tech"])
def test_staff_pages_fit_a_phone_screen(browser: Any, live_server: LiveServer, cases: dict[str, Any],
                                        role: str) -> None:
    case_id = cases["case"]["id"]
    context = _staff_context(browser, live_server, PHONE)
    page = context.new_page()
    try:
        sign_in(page, role)
        if role == "boss":
            assert page.locator("nav.mainnav a").count() >= 6  # the supervisor sees the longest menu
            seq = _widest_change_seq(page, live_server, case_id)
            paths = ["/", f"/instances/{case_id}", f"/instances/{case_id}/at/{seq}",
                     "/sla", "/board", "/reports", "/audit", "/processes"]
        else:
            assert page.locator("table.inbox-table tbody tr").count() >= 1  # the inbox has rows
            paths = ["/", f"/instances/{case_id}"]
        for path in paths:
            _check_phone_page(page, path, role)
        if role == "boss":  # the change table (the widest) scrolls within its own wrapper
            page.goto(paths[2])
            assert page.locator("table#data-diff").evaluate(
                "el => { for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {"
                " const o = getComputedStyle(p).overflowX; if (o === 'auto' || o === 'scroll') return true; }"
                " return false; }"), "the change table is not in a scrolling wrapper"
    finally:
        context.close()


def test_desktop_header_is_one_row(browser: Any, live_server: LiveServer, cases: dict[str, Any]) -> None:
    context = _staff_context(browser, live_server, DESKTOP)
    page = context.new_page()
    try:
        sign_in(page, "boss")
        page.goto("/board")
        header = page.locator("header.topbar").bounding_box()
        assert header is not None and header["height"] <= 49, header  # 48 px, as before
        tops = [page.locator(sel).bounding_box() for sel in
                ("header.topbar .brand", "nav.mainnav a >> nth=0", "nav.mainnav a >> nth=-1",
                 "header.topbar .whoami", "header.topbar form button[type=submit]")]
        assert all(b is not None for b in tops)
        centres = [b["y"] + b["height"] / 2 for b in tops]
        assert max(centres) - min(centres) <= 4, centres  # one row
        assert page.locator("nav.mainnav a").first.bounding_box()["height"] >= 44  # full-height menu tabs
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=str(screens() / "narrow-desktop-board.png"))
    finally:
        context.close()
