"""The timer worker also runs the application's recurring jobs (sending notices and the like)."""

from __future__ import annotations

import threading
from typing import Any

from engine.scheduler import TimerWorker, wait_until


def test_worker_runs_periodic_jobs_and_survives_their_failures(engine: Any) -> None:
    runs: list[str] = []
    lock = threading.Lock()

    def ok() -> None:
        with lock:
            runs.append("ok")

    def broken() -> None:
        with lock:
            runs.append("broken")
        raise RuntimeError("provider down")

    worker = TimerWorker(engine, "periodic-test", listen=False, sweep=60,
                         periodic=[("ok", 0.05, ok), ("broken", 0.05, broken)]).start()
    try:
        assert wait_until(lambda: runs.count("ok") >= 3 and runs.count("broken") >= 3, timeout=10)
    finally:
        worker.stop()


def test_app_wires_notice_sending_into_the_worker(app: Any) -> None:
    from app import periodic_jobs

    names = [name for name, _, _ in periodic_jobs(app.extensions["aftercare"])]
    assert names == ["outbox", "surveys", "links", "arrivals"]
