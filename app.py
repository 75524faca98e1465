"""Aftercare: the Flask application factory and the ``aftercare`` command line."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask.cli import FlaskGroup

from engine import SYSTEM, Database, WorkflowEngine
from engine.identity import add_user
from web.throttle import LoginThrottle

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("aftercare")

DEMO_PASSWORD = "aftercare-demo"
DEMO_STAFF: list[tuple[str, str, list[str]]] = [
    ("admin", "系统管理员 Administrator", ["admin"]),
    ("owner", "流程负责人 Process owner", ["process-owner"]),
    ("auditor", "审计员 Auditor", ["auditor"]),
    ("supervisor", "主管 Supervisor", ["supervisor"]),
    ("agent", "客服 Hotline agent", ["hotline"]),
    ("dispatcher", "调度 Dispatcher", ["dispatch"]),
    ("tech", "维修技师 Technician", ["technician"]),
    ("handler", "投诉处理 Complaint handler", ["complaints"]),
    ("care", "客户关怀 Customer care", ["customer-care"]),
    ("coordinator", "应急协调 Emergency coordinator", ["emergency"]),
    ("sales", "销售 Sales", ["sales"]),
    ("warehouse", "仓库 Warehouse", ["warehouse"]),
]


@dataclass
class Services:
    """What the web layer and the CLI share: one database, one engine."""

    db: Database
    engine: WorkflowEngine
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    on_denied: Callable[[Exception], None] | None = None
    error_page: Callable[[int, str, list[dict[str, Any]]], str] | None = None


def _secret_key(instance: Path) -> str:
    env = os.environ.get("AFTERCARE_SECRET_KEY")
    if env:
        return env
    path = instance / "secret_key"
    if not path.exists():
        instance.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    config = dict(config or {})
    app = Flask(__name__, instance_path=str(ROOT / "instance"), static_folder=str(ROOT / "web" / "static"),
                template_folder=str(ROOT / "web" / "templates"))
    instance = Path(app.instance_path)
    app.config.update(
        DATABASE_URL=os.environ.get("AFTERCARE_DATABASE_URL", f"sqlite:///{instance / 'aftercare.db'}"),
        PROCESSES_DIR=os.environ.get("AFTERCARE_PROCESSES_DIR", str(ROOT / "processes")),
        FORMS_DIR=os.environ.get("AFTERCARE_FORMS_DIR", str(ROOT / "forms")),
        SCHEDULER=os.environ.get("AFTERCARE_SCHEDULER", "on"),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Behind HTTPS set AFTERCARE_SECURE_COOKIES=1 so the session cookie is never sent in clear.
        SESSION_COOKIE_SECURE=os.environ.get("AFTERCARE_SECURE_COOKIES", "") in ("1", "true", "yes"),
        SESSION_COOKIE_NAME="aftercare_session",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        MAX_CONTENT_LENGTH=20 * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.config.update(config)
    if "SECRET_KEY" not in config:
        app.config["SECRET_KEY"] = _secret_key(instance)

    from handlers import build_registry

    db = Database(app.config["DATABASE_URL"])
    # Tests and embedders may bring their own handler set (the engine is not tied to ours).
    engine = WorkflowEngine(db, app.config.get("HANDLER_REGISTRY") or build_registry())
    app.extensions["aftercare"] = Services(db=db, engine=engine)

    from web.api import api
    from web.errors import register_error_handlers

    app.register_blueprint(api)
    register_error_handlers(app)

    from web.auth import csrf_token
    from web.i18n import init_i18n
    from web.pages import register_pages

    init_i18n(app)
    register_pages(app)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.after_request(security_headers)
    return app


# No inline script anywhere (page scripts are files). The staff pages and bpmn-js need no inline style
# either; 'unsafe-inline' styles stay allowed for the public pages' <style> block.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def security_headers(response: Any) -> Any:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def services(app: Flask) -> Services:
    return app.extensions["aftercare"]


def bundled_paths(app: Flask) -> list[str]:
    return [p for p in (app.config["PROCESSES_DIR"], app.config["FORMS_DIR"]) if Path(p).is_dir()]


@click.group(cls=FlaskGroup, create_app=create_app)
def cli() -> None:
    """Aftercare: after-sales service procedures as BPMN."""


@cli.command("init")
@click.pass_context
def init_command(ctx: click.Context) -> None:
    """Create or migrate the database and deploy the bundled processes and forms."""
    from flask import current_app

    svc = services(current_app)
    svc.db.migrate()
    click.echo(f"database ready: {svc.db.engine.url.render_as_string(hide_password=True)}")
    paths = bundled_paths(current_app)
    if not any(any(Path(p).glob("*.bpmn")) for p in paths):
        click.echo("no bundled processes to deploy")
        return
    _deploy_or_exit(svc, paths, "bundled processes unchanged")


@cli.command("deploy")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
def deploy_command(paths: tuple[str, ...]) -> None:
    """Deploy BPMN, DMN and form files or folders as one bundle."""
    from flask import current_app

    _deploy_or_exit(services(current_app), list(paths), "nothing changed")


def _deploy_or_exit(svc: Services, paths: list[str], unchanged: str) -> None:
    from engine import DeploymentInvalid

    try:
        deployed = svc.engine.deploy_paths(paths, SYSTEM)
    except DeploymentInvalid as exc:
        for e in exc.errors:
            where = ":".join(str(x) for x in (e.get("file"), e.get("line")) if x)
            element = f" [{e['element']}]" if e.get("element") else ""
            click.echo(f"error: {where}{element}: {e['message']}", err=True)
        raise SystemExit(1) from None
    for d in deployed:
        click.echo(f"deployed {d['key']} version {d['version']}")
    if not deployed:
        click.echo(unchanged)


@cli.group("user")
def user_group() -> None:
    """Manage staff accounts."""


@user_group.command("add")
@click.argument("name")
@click.option("--password", required=True, help="at least 8 characters")
@click.option("--group", "groups", multiple=True, help="a group the user is in (repeatable)")
@click.option("--display-name", default="")
def user_add(name: str, password: str, groups: tuple[str, ...], display_name: str) -> None:
    """Create a user (or reset their password and groups)."""
    from flask import current_app

    with services(current_app).db.write() as s:
        add_user(s, name, password, list(groups), display_name)
    click.echo(f"user {name} in groups: {', '.join(sorted({*groups, 'staff'}))}")


@cli.command("demo-staff")
def demo_staff() -> None:
    """Create one demo user per role and print their logins."""
    from flask import current_app

    with services(current_app).db.write() as s:
        for username, title, groups in DEMO_STAFF:
            add_user(s, username, DEMO_PASSWORD, groups, title)
    click.echo("Demo staff (username / password / groups):")
    for username, title, groups in DEMO_STAFF:
        click.echo(f"  {username:<12} {DEMO_PASSWORD}   {', '.join(groups):<16} {title}")


if __name__ == "__main__":
    cli()
