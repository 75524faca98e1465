"""Aftercare's engine against plain in-memory SpiffWorkflow on the same three-user-task process.

(a) plain SpiffWorkflow: parse once, then per case create the workflow, run engine steps and
    complete three user tasks in memory;
(b) Aftercare: start the case and complete its three tasks through the engine's one door,
    each command a durable commit to a SQLite file (WAL).
Prints cases/s for each and the ratio (b)/(a), measured side by side in one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from SpiffWorkflow.bpmn.workflow import BpmnWorkflow  # noqa: E402
from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser  # noqa: E402
from SpiffWorkflow.util.task import TaskState  # noqa: E402

BPMN = Path(__file__).parent / "three_tasks.bpmn"


def plain_spiff(n: int) -> float:
    parser = SpiffBpmnParser()
    parser.add_bpmn_file(str(BPMN))
    spec, subs = parser.get_spec("three_tasks"), parser.get_subprocess_specs("three_tasks")
    started = time.perf_counter()
    for i in range(n):
        wf = BpmnWorkflow(spec, subs)
        wf.do_engine_steps()
        for _ in range(3):
            task = wf.get_next_task(state=TaskState.READY, manual=True)
            task.data.update({"step": i})
            task.run()
            wf.do_engine_steps()
        assert wf.completed
    return n / (time.perf_counter() - started)


class AftercareSide:
    """Aftercare's engine on one SQLite file; ``run(n)`` times n cases and returns seconds."""

    def __init__(self, url: str) -> None:
        from engine import SYSTEM, Database, WorkflowEngine
        from web.inbox_query import searched_paths

        self.system = SYSTEM
        self.db = Database(url)
        self.db.migrate()
        # As the application runs it: the inbox's searched places of case data are kept up to date.
        self.engine = WorkflowEngine(self.db, search_paths=searched_paths())
        from engine.process import tune_garbage_collector

        tune_garbage_collector()  # as create_app() does for every web and timer worker
        self.engine.deploy_paths([BPMN], SYSTEM)

    def run(self, n: int) -> float:
        engine, system = self.engine, self.system
        started = time.perf_counter()
        for i in range(n):
            case = engine.start_case("three_tasks", {}, system)
            for _ in range(3):  # each response names the next open task, as the REST API's does
                case = engine.complete_task(case["tasks"][0]["id"], {"step": i}, system)
            assert case["status"] == "completed"
        return time.perf_counter() - started

    def close(self) -> None:
        self.db.dispose()


def aftercare(n: int, url: str) -> float:
    side = AftercareSide(url)
    try:
        return n / side.run(n)
    finally:
        side.close()


def plain_server() -> None:
    """Child process: runs ``n`` plain cases per line read from stdin, answers the seconds."""
    plain_spiff(50)
    for line in sys.stdin:
        n = int(line)
        print(n / plain_spiff(n), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=1000, help="cases per side")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds the cases are split into")
    ap.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_server:
        plain_server()
        return
    # Plain SpiffWorkflow runs in a process of its own: importing Aftercare's engine changes
    # some of SpiffWorkflow's methods, and the baseline must be SpiffWorkflow as shipped. The
    # two sides take turns in rounds, so a change in the machine's speed (other load, clock
    # scaling) during the run affects both alike.
    child = subprocess.Popen([sys.executable, __file__, "--plain-server"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    per_round = max(1, args.n // args.rounds)
    plain_seconds = ours_seconds = 0.0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            aftercare(20, f"sqlite:///{tmp}/warm.db")  # warm imports and caches
            side = AftercareSide(f"sqlite:///{tmp}/bench.db")
            for _ in range(args.rounds):
                child.stdin.write(f"{per_round}\n")
                child.stdin.flush()
                plain_seconds += float(child.stdout.readline())
                ours_seconds += side.run(per_round)
            side.close()
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    total = per_round * args.rounds
    a, b = total / plain_seconds, total / ours_seconds
    print(f"{'side':<42}{'cases/s':>10}")
    print(f"{'(a) plain SpiffWorkflow, in memory':<42}{a:>10.1f}")
    print(f"{'(b) Aftercare, durable commit per command':<42}{b:>10.1f}")
    print(f"ratio (b)/(a): {b / a:.3f}   (target >= 0.25; issue 8 target >= 0.5)")


if __name__ == "__main__":
    main()
