"""Aftercare: the Flask application factory and the ``aftercare`` command line."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask.cli import FlaskGroup
from werkzeug.routing import IntegerConverter

from engine import SYSTEM, Database, WorkflowEngine
from engine.identity import add_user
from engine.sla import SlaService
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
    sla: SlaService | None = None
    scheduler: Any = None  # the embedded timer worker of ``aftercare run``
    on_denied: Callable[[Exception], None] | None = None
    audit_sealer: Callable[[], None] | None = None  # seals the audit chains now and then (engine/audit)
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


class Int64Converter(IntegerConverter):
    """Path ids beyond the databases' 64-bit integers match no route (404) instead of overflowing."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:  # noqa: A002 (werkzeug's name)
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(map, *args, **kwargs)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    config = dict(config or {})
    app = Flask(__name__, instance_path=str(ROOT / "instance"), static_folder=str(ROOT / "web" / "static"),
                template_folder=str(ROOT / "web" / "templates"))
    instance = Path(app.instance_path)
    app.url_map.converters["int"] = Int64Converter
    app.config.update(
        DATABASE_URL=os.environ.get("AFTERCARE_DATABASE_URL", f"sqlite:///{instance / 'aftercare.db'}"),
        PROCESSES_DIR=os.environ.get("AFTERCARE_PROCESSES_DIR", str(ROOT / "processes")),
        FORMS_DIR=os.environ.get("AFTERCARE_FORMS_DIR", str(ROOT / "forms")),
        SCHEDULER=os.environ.get("AFTERCARE_SCHEDULER", "on"),
        # Seconds between automatic sealings of the audit chains after commits; 0 turns it off.
        AUDIT_SEAL_INTERVAL=float(os.environ.get("AFTERCARE_AUDIT_SEAL_INTERVAL", "2")),
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

    from handlers import build_registry, install_hooks

    db = Database(app.config["DATABASE_URL"])
    # Tests and embedders may bring their own handler set (the engine is not tied to ours).
    # SLA policies give timer expressions sla_due()/sla_cycle() and user tasks their due dates.
    sla = SlaService(db)
    from web.inbox_query import searched_paths

    engine = WorkflowEngine(db, app.config.get("HANDLER_REGISTRY") or build_registry(),
                            functions=sla.functions(), due_calculator=sla, search_paths=searched_paths())
    from engine.scheduler import notify_new_timers

    engine.runtime.on_commit.append(notify_new_timers(db))  # PostgreSQL: wake `aftercare worker` processes
    install_hooks(engine)  # linked cases start right after the command that links them
    from reports.facts import install as install_kpi_facts

    install_kpi_facts(engine)  # KPI facts written from each command's events, in its transaction
    app.extensions["aftercare"] = Services(db=db, engine=engine, sla=sla)

    from web.api import api
    from web.api_customers import api_customers
    from web.api_sla import api_sla
    from web.errors import register_error_handlers

    app.register_blueprint(api)
    app.register_blueprint(api_sla)
    app.register_blueprint(api_customers)
    from web.api_reports import api_reports

    app.register_blueprint(api_reports)
    from web.api_stock import api_stock

    app.register_blueprint(api_stock)  # the warehouse books procurement arrivals
    _install_audit(app)
    register_error_handlers(app)

    from web.public import init_public

    init_public(app)  # customer pages without login: intake, survey links, standards

    from web.ops import install as install_ops

    install_ops(app)

    from web.auth import csrf_token
    from web.i18n import init_i18n
    from web.pages import register_pages

    init_i18n(app)
    register_pages(app)
    from web.pages.reports import reports as reports_pages

    app.register_blueprint(reports_pages)
    from web.pages.stock import stock as stock_pages

    app.register_blueprint(stock_pages)  # stock arrivals (warehouse)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.after_request(security_headers)
    from engine.process import tune_garbage_collector

    tune_garbage_collector()  # after start-up, so what it allocated is frozen
    return app


# No inline script or style anywhere: page scripts and style sheets are files.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def security_headers(response: Any) -> Any:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _install_audit(app: Flask) -> None:
    from engine.audit.chain import AutoSealer
    from web.api_audit import api_audit, record_denied

    svc = services(app)
    app.register_blueprint(api_audit)
    svc.on_denied = record_denied
    if app.config["AUDIT_SEAL_INTERVAL"] > 0:
        sealer = AutoSealer(svc.db, app.config["AUDIT_SEAL_INTERVAL"])
        svc.audit_sealer = sealer
        svc.engine.runtime.on_commit.append(sealer)


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
    if svc.sla is not None:
        with svc.db.write() as s:
            created = svc.sla.ensure_defaults(s)
        click.echo(f"SLA defaults: added {', '.join(created)}" if created else "SLA policies and calendars present")
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


# --- domain data: CSV import/export and the demo data set --------------------------------------


@cli.command("import")
@click.argument("kind", type=click.Choice(["customers", "staff", "parts", "faq"]))
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def import_command(kind: str, file: str) -> None:
    """Import customers, staff profiles, parts stock or FAQ entries from CSV (all rows or none)."""
    from flask import current_app

    from handlers.import_export import ImportFailed, import_csv

    try:
        result = import_csv(services(current_app).db, kind, Path(file).read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        click.echo(f"error: {file} is not UTF-8 text ({exc.reason}); nothing was imported", err=True)
        raise SystemExit(1) from None
    except ImportFailed as exc:
        for error in exc.errors:
            click.echo(f"error: {file}: {error}", err=True)
        click.echo(f"{len(exc.errors)} error(s); nothing was imported", err=True)
        raise SystemExit(1) from None
    click.echo(f"imported {result}")


@cli.command("export")
@click.argument("kind", type=click.Choice(["customers", "staff", "parts", "faq"]))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="file to write (default stdout)")
def export_command(kind: str, output: str | None) -> None:
    """Export customers, staff profiles, parts stock or FAQ entries as CSV."""
    from flask import current_app

    from handlers.import_export import export_csv

    text = export_csv(services(current_app).db, kind)
    if output:
        Path(output).write_text(text, encoding="utf-8-sig")  # with BOM, so Excel reads the Chinese right
        click.echo(f"exported {kind} to {output}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command("demo-data")
def demo_data_command() -> None:
    """Load the demo data set (customers, staff profiles, parts, FAQ); adds only what is missing."""
    from flask import current_app

    from handlers.demo import load_demo_data
    from handlers.import_export import ImportFailed

    try:
        users, results = load_demo_data(services(current_app).db, DEMO_STAFF, DEMO_PASSWORD)
    except ImportFailed as exc:
        for error in exc.errors:
            click.echo(f"error: demo data: {error}", err=True)
        raise SystemExit(1) from None
    if users:
        click.echo(f"demo users added (password {DEMO_PASSWORD}): {', '.join(users)}")
    for result in results:
        click.echo(f"demo {result}")


@cli.group("links")
def links_group() -> None:
    """Cases started from other cases (an inquiry that became a complaint or a repair)."""


@links_group.command("resume")
def links_resume() -> None:
    """Start linked cases whose start was interrupted (e.g. the process stopped right after the link)."""
    from flask import current_app

    from handlers.links import start_pending_links

    started = start_pending_links(services(current_app).engine)
    click.echo(f"started {len(started)} linked case(s)" + (f": {', '.join(map(str, started))}" if started else ""))


# --- timers and SLA ------------------------------------------------------------------------------


def start_scheduler(app: Flask) -> Any:
    """Start the embedded timer worker (``aftercare run``); stopped when the process exits."""
    import atexit

    from engine.scheduler import TimerWorker

    svc = services(app)
    if svc.scheduler is None:
        svc.scheduler = TimerWorker(svc.engine, periodic=periodic_jobs(svc)).start()
        atexit.register(svc.scheduler.stop, False)
    return svc.scheduler


def periodic_jobs(svc: Services) -> list[tuple[str, float, Callable[[], Any]]]:
    """After-sales work that recurs: send notices, expire unanswered surveys, start linked cases
    and tell cases of goods received that a crash left pending. Run by the embedded scheduler and
    by `aftercare worker`."""
    from handlers.links import start_pending_links
    from handlers.outbox import OutboxDispatcher
    from handlers.parts import tell_waiting_cases
    from handlers.surveys import expire_surveys

    dispatcher = OutboxDispatcher(svc.db)
    return [
        ("outbox", float(os.environ.get("AFTERCARE_OUTBOX_INTERVAL", "10")), dispatcher.run_once),
        ("surveys", 600.0, lambda: expire_surveys(svc.db)),
        ("links", 60.0, lambda: start_pending_links(svc.engine)),
        ("arrivals", 60.0, lambda: tell_waiting_cases(svc.engine)),
    ]


def _run_with_scheduler(**kwargs: Any) -> Any:
    from flask.cli import ScriptInfo, get_debug_flag
    from flask.cli import run_command as flask_run
    from werkzeug.serving import is_running_from_reloader

    ctx = click.get_current_context()
    app = ctx.ensure_object(ScriptInfo).load_app()
    reloading = kwargs.get("reload")
    if reloading is None:
        reloading = get_debug_flag()
    # With the reloader only the serving child runs timers, never the watching parent.
    if str(app.config.get("SCHEDULER", "on")).lower() not in ("off", "0", "false", "no") and (
            not reloading or is_running_from_reloader()):
        start_scheduler(app)
        click.echo("timer scheduler: embedded (set AFTERCARE_SCHEDULER=off to run `aftercare worker` instead)")
    return ctx.invoke(flask_run, **kwargs)


def _add_run_command() -> None:
    from flask.cli import run_command as flask_run

    cli.add_command(click.Command("run", params=list(flask_run.params), callback=_run_with_scheduler,
                                  help="Serve the application, with the embedded timer scheduler unless "
                                       "AFTERCARE_SCHEDULER=off.", short_help="Run the server and timers."))


_add_run_command()


@cli.command("worker")
@click.option("--name", default=None, help="worker name in claims (default host:pid)")
@click.option("--lease", default=60.0, show_default=True, help="seconds a claimed timer stays reserved")
@click.option("--sweep", default=10.0, show_default=True, help="seconds between safety sweeps")
@click.option("--threads", default=None, type=int, help="parallel firing threads (default 1; on PostgreSQL run "
                                                          "more worker processes to scale)")
def worker_command(name: str | None, lease: float, sweep: float, threads: int | None) -> None:
    """Run the timer worker in the foreground (fires timers and SLA escalations)."""
    from flask import current_app

    from engine.scheduler import TimerWorker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("spiff").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run is noise here
    svc = services(current_app)
    worker = TimerWorker(svc.engine, name, lease=lease, sweep=sweep, threads=threads, periodic=periodic_jobs(svc))
    click.echo(f"timer worker {worker.name} running; Ctrl-C stops it")
    try:
        worker.run_forever()
    except (KeyboardInterrupt, SystemExit):
        worker.stop(wait=False)


def _sla_service() -> tuple[Services, SlaService]:
    from flask import current_app

    svc = services(current_app)
    assert svc.sla is not None
    return svc, svc.sla


def _echo_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def _or_exit(fn: Callable[[], Any]) -> Any:
    from engine import EngineError

    try:
        return fn()
    except EngineError as exc:
        click.echo(f"error: {exc}", err=True)
        for e in getattr(exc, "errors", None) or []:
            click.echo(f"  {e.get('field')}: {e.get('message')}", err=True)
        raise SystemExit(1) from None


@cli.group("sla")
def sla_group() -> None:
    """Read and change SLA policies (a change adds a version)."""


@sla_group.command("list")
def sla_list() -> None:
    """Policies in force."""
    svc, sla = _sla_service()
    with svc.db.read() as s:
        for p in sla.policies(s):
            steps = ", ".join(f"{st.action}{'→' + st.group if st.group else ''}@+{st.after}" for st in p.escalation)
            by_priority = " ".join(f"{k}:{v}" for k, v in p.priority_targets)
            click.echo(f"{p.name:<32} v{p.version:<3} {p.target:<7} {p.calendar:<6} warn {p.warn_ratio:.0%}"
                       f"{'  [' + by_priority + ']' if by_priority else ''}  {steps}")


@sla_group.command("show")
@click.argument("name")
def sla_show(name: str) -> None:
    """One policy with every version."""
    svc, sla = _sla_service()
    with svc.db.read() as s:
        _echo_json([v.to_dict() for v in _or_exit(lambda: sla.versions(s, name))])


@sla_group.command("set")
@click.argument("name")
@click.option("--target", help="ISO 8601 duration, e.g. PT4H or P1D (one working day on a business calendar)")
@click.option("--calendar", help="'24x7' or a business calendar name")
@click.option("--warn-ratio", type=float, help="warn at this share of the target (0.8 = 80 %)")
@click.option("--escalation", help='JSON list of steps, e.g. [{"after":"PT0S","action":"notify_group",'
                                   '"group":"supervisor"}]')
@click.option("--priority-target", "priority_targets", multiple=True,
              help="PRIORITY=DURATION: the target for cases of that priority (repeatable; PRIORITY= removes it)")
@click.option("--description")
def sla_set(name: str, target: str | None, calendar: str | None, warn_ratio: float | None,
            escalation: str | None, priority_targets: tuple[str, ...], description: str | None) -> None:
    """Change a policy (unspecified fields keep their current value); applies to timers set from now on."""
    import json

    from engine import NotFound

    svc, sla = _sla_service()
    with svc.db.write() as s:
        try:
            data = sla.policy(s, name).to_dict()
        except NotFound:
            data = {"name": name}
        for key, value in (("target", target), ("calendar", calendar), ("warn_ratio", warn_ratio),
                           ("description", description)):
            if value is not None:
                data[key] = value
        if escalation is not None:
            try:
                data["escalation"] = json.loads(escalation)
            except ValueError as exc:
                raise click.BadParameter(f"not JSON: {exc}", param_hint="--escalation") from None
        by_priority = dict(data.get("priority_targets") or {})
        for item in priority_targets:
            prio, sep, duration = item.partition("=")
            if not sep or not prio:
                raise click.BadParameter(f"{item!r} is not PRIORITY=DURATION", param_hint="--priority-target")
            if duration:
                by_priority[prio] = duration
            else:
                by_priority.pop(prio, None)
        data["priority_targets"] = by_priority
        data = {k: v for k, v in data.items() if k not in ("version", "created_at", "created_by")}
        policy, changed = _or_exit(lambda: sla.set_policy(s, data, SYSTEM, name=name))
    click.echo(f"{name}: version {policy.version}" + ("" if changed else " (unchanged)"))


@cli.group("calendar")
def calendar_group() -> None:
    """Read and change business calendars (working hours, holidays, make-up days)."""


@calendar_group.command("show")
@click.argument("name", default="china")
@click.option("--year", type=int, help="only this year's holidays and make-up days")
def calendar_show(name: str, year: int | None) -> None:
    """Show a calendar as JSON."""
    svc, sla = _sla_service()
    with svc.db.read() as s:
        info = _or_exit(lambda: sla.calendar_info(s, name))
    if year is not None:
        info["years"] = {str(year): info.get("years", {}).get(str(year), {"holidays": [], "makeup_days": []})}
    _echo_json(info)


@calendar_group.command("set-year")
@click.argument("name")
@click.argument("year", type=int)
@click.option("--holiday", "holidays", multiple=True, help="a public holiday YYYY-MM-DD (repeatable)")
@click.option("--makeup", "makeup_days", multiple=True, help="a make-up working day (调休) YYYY-MM-DD (repeatable)")
@click.option("--from-package", is_flag=True, help="take the year from the `holidays` package (mainland China)")
def calendar_set_year(name: str, year: int, holidays: tuple[str, ...], makeup_days: tuple[str, ...],
                      from_package: bool) -> None:
    """Replace one year's holidays and make-up working days of a calendar."""
    from engine.calendars import china_calendar

    svc, sla = _sla_service()
    if from_package:
        source = china_calendar(year)
        holidays = tuple(sorted(d.isoformat() for d in source.holidays))
        makeup_days = tuple(sorted(d.isoformat() for d in source.makeup_days))
    with svc.db.write() as s:
        info = _or_exit(lambda: sla.set_calendar_year(s, name, year, holidays, makeup_days, SYSTEM))
    entry = info["years"].get(str(year), {"holidays": [], "makeup_days": []})
    click.echo(f"{name} {year}: {len(entry['holidays'])} holidays, {len(entry['makeup_days'])} make-up days "
               f"(calendar version {info['version']})")


@cli.group("outbox")
def outbox_group() -> None:
    """Deliver customer notifications (e-mail, SMS) from the outbox."""


@outbox_group.command("send")
@click.option("--once", is_flag=True, help="one pass over the due messages, then exit")
@click.option("--interval", default=5.0, show_default=True, help="seconds between passes")
def outbox_send(once: bool, interval: float) -> None:
    """Send pending outbox messages with retries, each once (handlers/outbox.py)."""
    from flask import current_app

    from handlers.outbox import OutboxDispatcher

    dispatcher = OutboxDispatcher(services(current_app).db)
    if once:
        report = dispatcher.run_once()
        click.echo(f"outbox: {report.sent} sent, {report.retried} to retry, {report.failed} failed")
        return
    try:
        dispatcher.run_forever(interval)
    except KeyboardInterrupt:
        click.echo("outbox dispatcher stopped")


@cli.group("surveys")
def surveys_group() -> None:
    """Customer satisfaction surveys."""


@surveys_group.command("expire")
def surveys_expire() -> None:
    """Record unanswered surveys past their expiry as no response."""
    from flask import current_app

    from handlers.surveys import expire_surveys

    click.echo(f"{expire_surveys(services(current_app).db)} survey(s) expired unanswered")



# --- audit ---------------------------------------------------------------------------------------


@cli.group("audit")
def audit_group() -> None:
    """Verify case histories (hash chains and replay) and export them for offline checks."""


def _audit_echo_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _audit_or_exit(fn: Callable[[], Any]) -> Any:
    from engine import EngineError

    try:
        return fn()
    except EngineError as exc:
        raise click.ClickException(str(exc)) from None


def _audit_app() -> Flask:
    from flask.cli import ScriptInfo

    return click.get_current_context().ensure_object(ScriptInfo).load_app()


def _problem_line(report: dict[str, Any]) -> str:
    p = report.get("problem") or {}
    where = " ".join(f"{k} {p[k]}" for k in ("chain", "case_id", "seq", "global_seq", "type") if p.get(k) is not None)
    return f"BROKEN at {where}: {p.get('reason')}"


def _divergence_line(result: dict[str, Any]) -> str:
    d = result.get("divergence") or {}
    return (f"case {result.get('case')}: DIVERGED at event {d.get('seq')} ({d.get('event')}): {d.get('reason')}\n"
            f"  recorded: {d.get('recorded')}\n  replayed: {d.get('replayed')}")


@audit_group.command("verify", with_appcontext=False)
@click.argument("target", required=False)
@click.option("--all", "all_cases", is_flag=True, help="verify the global chain and every case")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="only events written since this UTC date or time")
@click.option("--replay/--no-replay", "with_replay", default=None,
              help="also replay cases (default: yes for one case or a bundle, no for --all/--since)")
@click.option("--json", "as_json", is_flag=True, help="print the full report as JSON")
def audit_verify(target: str | None, all_cases: bool, since: Any, with_replay: bool | None, as_json: bool) -> None:
    """Verify hash chains and replay: a case id, every case (--all/--since), or BUNDLE.json offline."""
    import datetime as dt
    import json

    from engine.audit import bundle as audit_bundle
    from engine.audit import chain, records

    if target is not None and not target.isdigit():  # an exported bundle: no database at all
        try:
            report = audit_bundle.verify_bundle(json.loads(Path(target).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot read {target}: {exc}") from None
        if as_json:
            _audit_echo_json(report)
        else:
            for part in ("integrity", "definitions", "chain"):
                click.echo(f"{part}: {'ok' if report[part]['ok'] else report[part].get('reason') or report[part]}")
            result = report["replay"]
            click.echo(f"replay: {result['result']} ({result.get('events')} events)" if result["result"] == "verified"
                       else _divergence_line(result))
            click.echo(f"case {report['case']} ({report['process']} v{report['version']}): "
                       f"{'ok' if report['ok'] else 'NOT VERIFIED'}")
        raise SystemExit(0 if report["ok"] else 1)

    app = _audit_app()
    with app.app_context():
        svc = services(app)
        if target is not None:
            report = _audit_or_exit(lambda: records.verify_case(svc.db, int(target), svc.engine.specs,
                                                          with_replay is not False))
            if as_json:
                _audit_echo_json(report)
            else:
                click.echo(f"chain: ok ({report['chain']['events']} events, {report['chain']['sealed']} sealed)"
                           if report["chain"]["ok"] else _problem_line(report["chain"]))
                if "replay" in report:
                    click.echo("replay: verified" if report["replay"]["result"] == "verified"
                               else _divergence_line(report["replay"]))
            raise SystemExit(0 if report["ok"] else 1)
        if not all_cases and since is None:
            raise click.UsageError("give a case id, a bundle file, --all or --since")
        since_utc = since.replace(tzinfo=dt.UTC) if since is not None else None
        total = chain.count_to_verify(svc.db, since_utc)
        with click.progressbar(length=total, label="verifying hash chains", file=sys.stderr) as bar:
            report = chain.verify_all(svc.db, since_utc, progress=bar.update)
        ok = report["ok"]
        replays: list[dict[str, Any]] = []
        if ok and with_replay:
            from sqlalchemy import select

            from engine.models import Case

            with svc.db.read() as s:
                q = select(Case.id).order_by(Case.id)
                ids = list(s.scalars(q if since_utc is None else q.where(Case.updated_at >= since_utc)))
            with click.progressbar(ids, label="replaying cases", file=sys.stderr) as bar:
                for case_id in bar:
                    result = records.replay_case(svc.db, case_id, svc.engine.specs)
                    if result["result"] != "verified":
                        replays.append(result)
                        ok = False
                        break
        if as_json:
            _audit_echo_json({**report, "replay_failures": replays, "ok": ok})
        else:
            head = report["head"]["events"]
            click.echo(f"checked {report['events']} events of {report['cases']} cases and "
                       f"{report['access_records']} access records")
            click.echo(f"global chain head: {head['seq']} {head['hash']}")
            click.echo("chains: ok" if report["ok"] else _problem_line(report))
            for result in replays:
                click.echo(_divergence_line(result))
            if with_replay and not replays and report["ok"]:
                click.echo("replay: every case verified")
        raise SystemExit(0 if ok else 1)


@audit_group.command("export")
@click.argument("case_id", type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="file (default: stdout)")
def audit_export(case_id: int, output: str | None) -> None:
    """Write a self-contained audit bundle of a case (checked offline by `aftercare audit verify FILE`)."""
    import getpass
    import json

    from flask import current_app

    from engine.audit import access
    from engine.audit import bundle as audit_bundle

    svc = services(current_app)
    who = f"cli:{getpass.getuser()}"
    with svc.db.write() as s:
        data = _audit_or_exit(lambda: audit_bundle.export_case(s, case_id, who, list(svc.engine.specs.functions)))
        access.record_access(s, who, f"export of case {case_id}", case_id=case_id, action=access.EXPORT,
                             detail={"events": len(data["events"]), "bundle_sha256": data["bundle_sha256"],
                                     "output": output or "stdout"})
    text = json.dumps(data, ensure_ascii=False, indent=1)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"case {case_id}: {len(data['events'])} events written to {output}", err=True)
    else:
        click.echo(text)


@audit_group.command("seal")
def audit_seal() -> None:
    """Seal every unsealed event and access record into the global chains now."""
    from flask import current_app

    from engine.audit import chain

    svc = services(current_app)
    done = chain.seal_all(svc.db)
    with svc.db.read() as s:
        heads = chain.heads(s)
    click.echo(f"sealed {done['events']} events and {done['access']} access records; "
               f"head {heads['events']['seq']} {heads['events']['hash']}")


@cli.command("backup")
@click.argument("file", type=click.Path(dir_okay=False))
def backup_command(file: str) -> None:
    """Write a consistent backup of the database to FILE (online)."""
    from flask import current_app

    from engine.backup import backup

    path = backup(services(current_app).db, Path(file))
    click.echo(f"backup written to {path}")


@cli.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.confirmation_option(prompt="Replace the current database with this backup?")
def restore_command(file: str) -> None:
    """Replace the database's content with a backup made by `aftercare backup`."""
    from flask import current_app

    from engine.backup import restore

    restore(services(current_app).db, Path(file))
    click.echo(f"restored from {file}")


@cli.group("search")
def search_group() -> None:
    """The searched places of case data (the inbox's and the case browser's search)."""


@search_group.command("rebuild")
@click.option("--batch", type=click.IntRange(1, 100000), default=500, show_default=True,
              help="cases per transaction")
def search_rebuild(batch: int) -> None:
    """Rewrite the search rows of every case from its data, e.g. after the searched places
    (web/inbox_query.SEARCH_PATHS) changed; commands keep them up to date otherwise."""
    from flask import current_app

    from engine import search
    from web.inbox_query import searched_paths

    done = search.rebuild(services(current_app).db, searched_paths(), batch)
    click.echo(f"{done.cases} cases: {done.added} search rows added, {done.changed} changed, "
               f"{done.removed} removed")


@cli.group("report")
def report_group() -> None:
    """KPI reports: the monthly report, the quarterly evaluation, rebuilding facts from history."""


def _report_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--format", "fmt", type=click.Choice(["text", "csv", "xlsx", "json"]), default=None,
                     help="default: from the output file's extension, else text"),
        click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="file (default: stdout)"),
        click.option("--procedure", default=None, help="only this procedure (process key)"),
        click.option("--team", default=None, help="only work of this group"),
        click.option("--person", default=None, help="only work of this user"),
    ]):
        fn = option(fn)
    return fn


def _write_report(kind: str, label: str, fmt: str | None, output: str | None, procedure: str | None,
                  team: str | None, person: str | None) -> None:
    import json

    from flask import current_app

    from engine import InvalidInput
    from reports import exports
    from reports import kpis as K

    try:
        period = K.Period.month(label) if kind == "monthly" else K.Period.quarter(label)
    except InvalidInput as exc:
        raise click.BadParameter(exc.message) from None
    fmt = fmt or (Path(output).suffix.lstrip(".").lower() if output else "text")
    if fmt not in ("text", "csv", "xlsx", "json"):
        raise click.BadParameter(f"unknown format {fmt!r}: use text, csv, xlsx or json")
    f = K.Filters(procedure=procedure, team=team, person=person)
    with services(current_app).db.read() as s:
        doc = exports.monthly(s, period, f) if kind == "monthly" else exports.quarterly(s, period, f)
    if fmt == "text":
        body = exports.to_text(doc).encode("utf-8")
    elif fmt == "json":
        body = json.dumps({"period": period.to_dict(), "filters": f.to_dict(), "kpis": doc.kpis},
                          ensure_ascii=False, indent=2).encode("utf-8")
    else:
        body = exports.render(doc, fmt)
    if output:
        Path(output).write_bytes(body)
        click.echo(f"{doc.title} {period.label}: {output}")
    elif fmt == "xlsx":
        raise click.UsageError("XLSX needs an output file (-o report.xlsx)")
    else:
        click.echo(body.decode("utf-8"), nl=False)


@report_group.command("monthly")
@click.argument("month")
@_report_options
def report_monthly(month: str, fmt: str | None, output: str | None, procedure: str | None, team: str | None,
                   person: str | None) -> None:
    """The monthly service report (seed 001) for MONTH, e.g. 2026-10."""
    _write_report("monthly", month, fmt, output, procedure, team, person)


@report_group.command("quarterly")
@click.argument("quarter")
@_report_options
def report_quarterly(quarter: str, fmt: str | None, output: str | None, procedure: str | None, team: str | None,
                     person: str | None) -> None:
    """The quarterly evaluation (seed 004) for QUARTER, e.g. 2026-Q3."""
    _write_report("quarterly", quarter, fmt, output, procedure, team, person)


@report_group.command("rebuild")
@click.option("--case", "case_ids", type=int, multiple=True, help="only this case (repeatable; default: all)")
def report_rebuild(case_ids: tuple[int, ...]) -> None:
    """Recompute the KPI facts of existing cases from their recorded history."""
    from flask import current_app

    from reports.facts import rebuild

    totals = rebuild(services(current_app).db, list(case_ids) or None)
    click.echo(f"rebuilt KPI facts: {totals['cases']} cases, {totals['events']} events read, "
               f"{totals['facts']} facts")


if __name__ == "__main__":
    cli()
