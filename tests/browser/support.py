"""What the browser tests share besides fixtures: the sample bundle with a layout, the live
server's handle, signing in, and where artifacts go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import HandlerRegistry
from tests.conftest import PASSWORD, SAMPLES

from .layout import add_layout

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
STAFF = {"agent": ["hotline"], "tech": ["technician"], "owner": ["process-owner"], "boss": ["supervisor"],
         "auditor": ["auditor"]}


def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # screenshots are never committed
    return ARTIFACTS


@dataclass
class LiveServer:
    url: str
    app: Any

    @property
    def engine(self) -> Any:
        return self.app.extensions["aftercare"].engine


def sample_handlers() -> HandlerRegistry:
    registry = HandlerRegistry()

    @registry.register("sample.notify")
    def notify(ctx: Any, recipient: str, priority: str) -> dict[str, Any]:
        ctx.notify("sms", recipient, f"Your request has priority {priority}")
        return {"sent": True, "to": recipient}

    @registry.register("sample.flaky")
    def flaky(ctx: Any, value: Any = None) -> dict[str, Any]:
        return {"ok": True}

    return registry


def sample_bundle() -> list[tuple[str, bytes]]:
    """The engine tests' sample processes, with a diagram layout added so bpmn-js can draw them."""
    files = []
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix in (".bpmn", ".dmn", ".json"):
            content = path.read_bytes()
            files.append((path.name, add_layout(content) if path.suffix == ".bpmn" else content))
    return files


def sign_in(page: Any, username: str) -> None:
    page.goto("/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.stack button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)
