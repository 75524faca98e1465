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


def aftercare(n: int, url: str) -> float:
    from engine import SYSTEM, Database, WorkflowEngine

    db = Database(url)
    db.migrate()
    engine = WorkflowEngine(db)
    engine.deploy_paths([BPMN], SYSTEM)
    started = time.perf_counter()
    for i in range(n):
        case = engine.start_case("three_tasks", {}, SYSTEM)
        for _ in range(3):  # each response names the next open task, as the REST API's does
            case = engine.complete_task(case["tasks"][0]["id"], {"step": i}, SYSTEM)
        assert case["status"] == "completed"
    elapsed = time.perf_counter() - started
    db.dispose()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=1000, help="cases per side")
    ap.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_only:
        plain_spiff(50)
        print(plain_spiff(args.n))
        return
    # Plain SpiffWorkflow runs in a process of its own: importing Aftercare's engine changes
    # some of SpiffWorkflow's methods, and the baseline must be SpiffWorkflow as shipped.
    out = subprocess.run([sys.executable, __file__, "--plain-only", "-n", str(args.n)], check=True,
                         capture_output=True, text=True).stdout
    a = float(out.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        aftercare(20, f"sqlite:///{tmp}/warm.db")  # warm imports and caches
        b = aftercare(args.n, url)
    print(f"{'side':<42}{'cases/s':>10}")
    print(f"{'(a) plain SpiffWorkflow, in memory':<42}{a:>10.1f}")
    print(f"{'(b) Aftercare, durable commit per command':<42}{b:>10.1f}")
    print(f"ratio (b)/(a): {b / a:.3f}   (target >= 0.25; issue 8 target >= 0.5)")


if __name__ == "__main__":
    main()
