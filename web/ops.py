"""Operations endpoints: a health check for load balancers and Prometheus metrics."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, Flask, Response, jsonify
from sqlalchemy import func, select, text

from engine import Unavailable
from engine.models import Case, OpenTask, OutboxMessage, Timer, utcnow

from .auth import current_actor, services
from .openapi import route

ops = Blueprint("ops", __name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class CommandMetrics:
    """Counts commits of the engine's one door and their latency, per process (web worker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.seconds = 0.0
        self.buckets = [0] * len(LATENCY_BUCKETS)

    def observe(self, seconds: float) -> None:
        with self._lock:
            self.total += 1
            self.seconds += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1

    def lines(self) -> list[str]:
        with self._lock:
            out = ["# HELP aftercare_commands_total Commands committed through the engine by this process.",
                   "# TYPE aftercare_commands_total counter",
                   f"aftercare_commands_total {self.total}",
                   "# HELP aftercare_command_seconds Command latency from lock to commit.",
                   "# TYPE aftercare_command_seconds histogram"]
            for bound, count in zip(LATENCY_BUCKETS, self.buckets, strict=True):
                out.append(f'aftercare_command_seconds_bucket{{le="{bound}"}} {count}')
            out += [f'aftercare_command_seconds_bucket{{le="+Inf"}} {self.total}',
                    f"aftercare_command_seconds_sum {self.seconds:.6f}",
                    f"aftercare_command_seconds_count {self.total}"]
            return out


def install(app: Flask) -> None:
    """Register the blueprint and count every command the engine commits."""
    metrics = CommandMetrics()
    app.extensions["aftercare_metrics"] = metrics

    def on_commit(cmd: Any) -> None:
        if cmd.started:
            metrics.observe(max(0.0, time.time() - cmd.started))

    services_ = app.extensions["aftercare"]
    services_.engine.runtime.on_commit.append(on_commit)
    app.register_blueprint(ops)


@route(ops, "/healthz", "GET", "Health: the database answers", auth=False, responses={200: "object", 503: "Error"})
def healthz() -> tuple[Response, int]:
    try:
        with services().db.read() as s:
            s.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the database makes the instance unhealthy
        raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc
    return jsonify({"status": "ok", "database": "ok"}), 200


@route(ops, "/metrics", "GET", "Prometheus metrics (admins and supervisors)", responses={200: "text"})
def metrics() -> Response:
    current_actor().require({"admin", "supervisor"}, "reading metrics")
    from flask import current_app

    now = utcnow()
    lines = current_app.extensions["aftercare_metrics"].lines()
    with services().db.read() as s:
        open_tasks = s.scalar(select(func.count()).select_from(OpenTask))
        due = s.scalar(select(func.count()).select_from(Timer).where(Timer.status == "pending", Timer.due_at <= now))
        pending = s.scalar(select(func.count()).select_from(Timer).where(Timer.status == "pending"))
        incidents = s.scalar(select(func.count()).select_from(Case).where(Case.status == "error"))
        outbox = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == "pending"))
        by_status = dict(s.execute(select(Case.status, func.count()).group_by(Case.status)).all())
    gauges = [
        ("aftercare_open_tasks", "Open user tasks.", open_tasks),
        ("aftercare_timers_pending", "Timers not yet fired.", pending),
        ("aftercare_timers_late", "Pending timers whose due time has passed.", due),
        ("aftercare_incidents", "Cases in status error.", incidents),
        ("aftercare_outbox_pending", "Notifications waiting to be sent.", outbox),
    ]
    for name, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value or 0}"]
    lines += ["# HELP aftercare_cases Cases by status.", "# TYPE aftercare_cases gauge"]
    for status in ("running", "waiting", "completed", "error", "cancelled"):
        lines.append(f'aftercare_cases{{status="{status}"}} {by_status.get(status, 0)}')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
