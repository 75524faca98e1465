"""Browser tests: the app served by a real server thread on 127.0.0.1 (temporary SQLite database),
driven by Playwright through Debian's Chromium. A failing test leaves a screenshot in test-artifacts/."""

from __future__ import annotations

import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import SYSTEM
from engine.identity import add_user
from tests.conftest import PASSWORD

from .support import CHROMIUM, STAFF, LiveServer, artifacts_dir, sample_bundle, sample_handlers


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, _sqlite_template: Path) -> Iterator[LiveServer]:
    from werkzeug.serving import make_server

    from app import create_app

    db_path = tmp_path_factory.mktemp("browser") / "aftercare.db"
    shutil.copy(_sqlite_template, db_path)
    app = create_app({"DATABASE_URL": f"sqlite:///{db_path}", "SECRET_KEY": "browser-tests", "SCHEDULER": "off",
                      "HANDLER_REGISTRY": sample_handlers()})
    svc = app.extensions["aftercare"]
    svc.engine.deploy(sample_bundle(), SYSTEM)
    with svc.db.write() as s:
        for name, groups in STAFF.items():
            add_user(s, name, PASSWORD, groups)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}", app)
    finally:
        server.shutdown()
        thread.join(timeout=5)
        svc.db.dispose()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: BROWSER TESTS SKIPPED (run 'make browser' to install Debian's chromium)"
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM),
                                      args=["--headless", "--no-sandbox", "--disable-gpu",
                                            "--disable-background-networking"])
        yield chromium
        chromium.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser: Any, live_server: LiveServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) in Chinese, collecting console errors."""
    context = browser.new_context(base_url=live_server.url, locale="zh-CN", viewport={"width": 1400, "height": 900},
                                  extra_http_headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    tab.console_errors = []  # type: ignore[attr-defined]
    tab.on("console", lambda m: m.type == "error" and tab.console_errors.append(m.text))  # type: ignore[attr-defined]
    try:
        yield tab
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            shot = artifacts_dir() / f"{request.node.name}.png"
            try:
                tab.screenshot(path=str(shot), full_page=True)
                print(f"screenshot of the failure: {shot}")
            except Exception as exc:  # the page may be gone; the test's own error matters more
                print(f"no screenshot: {exc}")
        context.close()
