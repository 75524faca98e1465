"""Shared by the timer and SLA tests: the test engine (SLA functions, test handlers, the
diagrams in tests/timer_processes) and a worker process entry point.

Run as a script it is one timer worker process: ``python tests/timer_support.py URL NAME
[--lease S] [--sweep S] [--threads N] [--stop-file PATH]``; it prints ``fired=<n>`` when
it stops. With ``AFTERCARE_TEST_SLOW_MARKER=<path>`` in its environment the ``test.step``
handler creates that file and then hangs, so a test can kill the worker mid-fire.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TIMER_PROCESSES = HERE / "timer_processes"
if str(HERE.parent) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(HERE.parent))

from engine import SYSTEM, Database, HandlerRegistry, WorkflowEngine  # noqa: E402
from engine.identity import Actor  # noqa: E402
from engine.sla import SlaService  # noqa: E402

OWNER = Actor("owner", frozenset({"process-owner"}))

# Sub-second and short policies for real-time tests; long ones for time-machine tests.
TEST_POLICIES: list[dict[str, Any]] = [
    {"name": "test.handle", "target": "PT2H", "calendar": "24x7", "warn_ratio": 0.5,
     "escalation": [{"after": "PT0S", "action": "notify_group", "group": "supervisor"},
                    {"after": "PT0S", "action": "raise_priority", "levels": 2},
                    {"after": "PT1H", "action": "reassign_group", "group": "supervisor"}]},
    {"name": "test.investigate", "target": "PT2H", "calendar": "24x7"},
    {"name": "test.wait", "target": "PT30M", "calendar": "24x7"},
    {"name": "test.progress", "target": "PT1H", "calendar": "24x7"},
    {"name": "test.report", "target": "PT1H", "calendar": "24x7"},
]


def build_handlers(calls: list[tuple[str, Any]] | None = None) -> HandlerRegistry:
    registry = HandlerRegistry()

    @registry.register("test.progress")
    def progress(ctx: Any) -> dict[str, Any]:
        if calls is not None:
            calls.append(("test.progress", ctx.case_id))
        ctx.notify("staff", "emergency", f"progress update for case {ctx.case_id}")
        return {"sent_at": ctx.now.isoformat()}

    @registry.register("test.step")
    def step(ctx: Any) -> dict[str, Any]:
        ctx.notify("sms", "customer", f"step of case {ctx.case_id}")
        marker = os.environ.get("AFTERCARE_TEST_SLOW_MARKER")
        if marker:
            Path(marker).write_text(str(os.getpid()))
            time.sleep(600)  # killed here, inside the firing transaction
        return {"done": True}

    return registry


def build_engine(db: Database, calls: list[tuple[str, Any]] | None = None,
                 sla: SlaService | None = None) -> WorkflowEngine:
    sla = sla or SlaService(db)
    return WorkflowEngine(db, build_handlers(calls), functions=sla.functions(), due_calculator=sla)


def seed_policies(db: Database, sla: SlaService, policies: list[dict[str, Any]] | None = None) -> None:
    with db.write() as s:
        sla.ensure_defaults(s)
        for p in policies or TEST_POLICIES:
            sla.set_policy(s, p, OWNER)


def main(argv: list[str] | None = None) -> int:
    from engine.scheduler import TimerWorker

    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--sweep", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--stop-file", default=None)
    args = parser.parse_args(argv)
    db = Database(args.url)
    engine = build_engine(db)
    worker = TimerWorker(engine, args.name, lease=args.lease, sweep=args.sweep, threads=args.threads,
                         retry_delay=1.0)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    worker.start()
    print(f"ready {dt.datetime.now(dt.UTC).isoformat()}", flush=True)
    while not stopping and not (args.stop_file and Path(args.stop_file).exists()):
        time.sleep(0.05)
    worker.stop()
    print(f"fired={worker.fired}", flush=True)
    db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["SYSTEM", "TIMER_PROCESSES", "build_engine", "build_handlers", "seed_policies"]
