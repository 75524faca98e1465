"""The load-and-kill run: 500 cases driven concurrently over HTTP against gunicorn (on SQLite and on
PostgreSQL) while web workers, the whole web server, the timer worker and the outbox dispatcher are
SIGKILLed at random moments and restarted. Afterwards, from the database:

* every completion a client saw acknowledged (200) is in the history exactly once, and no task was
  completed twice at all;
* no case is stuck: every case (including ones whose start was not acknowledged) reaches the end;
* every timer fired exactly once (one ``timer_fired`` event per case, no timer pending or claimed);
* no outbox message was handed to the SMS gateway twice (the gateway here records every hand-over);
* every case verifies: ``aftercare audit verify --all --replay`` (hash chains and replay).

    .venv/bin/python bench/chaos.py [--cases 500] [--kills 8] [--backend both|sqlite|postgresql]

Prints its figures; exits non-zero when a check fails. Uses ``bench/cluster.py`` for the topology.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the project root, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from handlers.outbox import SmsGateway  # noqa: E402

HERE = Path(__file__).resolve().parent
PROCESSES = HERE / "chaos_processes"


class CountingSmsGateway(SmsGateway):
    """Records every hand-over (one JSON line, appended atomically) and never deduplicates, so a
    message handed over twice shows up twice."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def from_env(cls) -> CountingSmsGateway:
        return cls(os.environ["AFTERCARE_CHAOS_SMS_FILE"])

    def send_sms(self, phone: str, text: str, idempotency_key: str) -> str:
        line = json.dumps({"key": idempotency_key, "phone": phone, "pid": os.getpid()}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return idempotency_key


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def run_backend(name: str, url: str, cases: int, kills: int, threads: int, web: int, seed: int) -> dict[str, Any]:
    from sqlalchemy import create_engine, func, select

    from bench.cluster import BIN, ROOT, Client, Cluster, Stats
    from engine.models import Case, CaseEvent, OpenTask, OutboxMessage, Timer

    rng = random.Random(seed)
    users = tuple(f"clerk{i}" for i in range(threads))

    class ChaosCluster(Cluster):
        """The cluster plus an outbox dispatcher, with named processes that can be killed and restarted."""

        @property
        def env(self) -> dict[str, str]:
            env = super().env
            env.update(AFTERCARE_PROCESSES_DIR=str(PROCESSES), AFTERCARE_SMS_GATEWAY="bench.chaos:CountingSmsGateway",
                       AFTERCARE_CHAOS_SMS_FILE=str(self.sms_file), AFTERCARE_SQLITE_BUSY_TIMEOUT_MS="30000")
            return env

        @property
        def sms_file(self) -> Path:
            return Path(str(self.folder) + "-sms.jsonl")

        def _add_users(self) -> None:
            super()._add_users()
            from engine import Database
            from handlers.models import Customer

            db = Database(self.url)
            with db.write() as s:
                for i in range(cases * 2):
                    s.add(Customer(name=f"客户 {i}", phone=f"139{i:08d}"))
            db.dispose()

        def __enter__(self) -> ChaosCluster:
            super().__enter__()
            self.named = {"gunicorn": self.procs[0], "worker": self.procs[1]}
            self._spawn("outbox", [str(BIN / "aftercare"), "outbox", "send", "--interval", "1"])
            self.named["outbox"] = self.procs[-1]
            self.argv = {n: list(p.args) for n, p in self.named.items()}  # type: ignore[arg-type]
            return self

        def restart(self, what: str) -> None:
            old = self.named[what]
            if old in self.procs:  # killed: no longer one of the cluster's live processes
                self.procs.remove(old)
            self._spawn(what + "-again", self.argv[what])
            self.named[what] = self.procs[-1]

    stats = Stats()
    acked: list[str] = []
    lost: list[str] = []  # requests that got no answer (connection dropped by a kill)
    lock = threading.Lock()
    kill_log: list[str] = []
    t_start = time.monotonic()
    with ChaosCluster(url, web=web, timer_workers=1, users=users) as cluster:
        tokens = {u: cluster.token(u) for u in users}
        local = threading.local()

        def client() -> Client:
            if not hasattr(local, "c"):
                local.c = Client(cluster.port, tokens[users[threading.get_ident() % len(users)]], stats)
            return local.c

        def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            """One request, retried while the server is down; (0, None) when the answer was lost."""
            for attempt in range(120):
                try:
                    status, data, _ = client().call(method, path, body)
                except ConnectionRefusedError:  # the server is down: the request was never sent
                    client().conn.close()
                    time.sleep(0.5)
                    continue
                except OSError:
                    client().conn.close()
                    if method == "POST":
                        with lock:
                            lost.append(f"{method} {path}")
                        return 0, None  # unknown outcome: the caller checks the state
                    time.sleep(0.5)
                    continue
                if status in (502, 503) and attempt < 119:
                    time.sleep(0.5)
                    continue
                return status, data
            return 0, None

        def complete(case_id: int, spec: str) -> None:
            """Complete the case's open ``spec`` task; an unanswered attempt is checked and retried."""
            for _ in range(60):
                status, inst = call("GET", f"/api/instances/{case_id}")
                if status != 200:
                    time.sleep(0.5)
                    continue
                task = next((t["id"] for t in inst["tasks"] if t["spec"] == spec), None)
                if task is None:
                    return  # done by an earlier attempt whose answer was lost
                status, _ = call("POST", f"/api/tasks/{task}/complete", {"data": {spec + "_by": "chaos"}})
                if status == 200:
                    with lock:
                        acked.append(task)
                    return
                time.sleep(0.3)
            raise RuntimeError(f"case {case_id}: could not complete {spec}")

        def start_and_register(i: int) -> int | None:
            status, inst = call("POST", "/api/instances", {"process": "chaos_care",
                                                           "data": {"n": i, "customer_id": i + 1}})
            if status != 201:
                return None  # not acknowledged: found and finished by the sweep below
            complete(int(inst["id"]), "register")
            return int(inst["id"])

        stop = threading.Event()

        def killer() -> None:
            choices = ["web-worker", "web-worker", "gunicorn", "worker", "outbox"]
            for k in range(kills):
                if stop.wait(rng.uniform(3, 9)):
                    return
                what = choices[k % len(choices)] if k < len(choices) else rng.choice(choices)
                try:
                    if what == "web-worker":
                        pids = _children(cluster.named["gunicorn"].pid)
                        for pid in rng.sample(pids, k=max(1, len(pids) // 2)):
                            os.kill(pid, signal.SIGKILL)  # gunicorn's master forks a new worker
                        kill_log.append(f"{time.monotonic() - t_start:.1f}s SIGKILL {max(1, len(pids) // 2)} "
                                        "web worker(s)")
                    else:
                        proc = cluster.named[what]
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(timeout=10)
                        time.sleep(rng.uniform(0.2, 1.5))
                        cluster.restart(what)
                        kill_log.append(f"{time.monotonic() - t_start:.1f}s SIGKILL {what}, restarted")
                except (ProcessLookupError, ValueError) as exc:
                    kill_log.append(f"kill {what} failed: {exc}")

        chaos = threading.Thread(target=killer, daemon=True)
        chaos.start()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(start_and_register, range(cases)))

        eng = create_engine(url)

        def open_specs() -> dict[int, list[str]]:
            with eng.connect() as conn:
                rows = conn.execute(select(OpenTask.case_id, OpenTask.spec)).all()
            out: dict[int, list[str]] = {}
            for case_id, spec in rows:
                out.setdefault(case_id, []).append(spec)
            return out

        # Finish every case: register where a start was not acknowledged, resolve once the timer fired.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with eng.connect() as conn:
                running = conn.scalar(select(func.count()).select_from(Case).where(Case.status != "completed"))
            if not running:
                break
            todo = [(cid, spec) for cid, specs in open_specs().items() for spec in specs]
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda cs: complete(*cs), todo))
            time.sleep(1)
        stop.set()
        chaos.join()
        cluster.wait_healthy()
        # let the dispatcher drain the outbox
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with eng.connect() as conn:
                unsent = conn.scalar(select(func.count()).select_from(OutboxMessage)
                                     .where(OutboxMessage.status != "sent"))
            if not unsent:
                break
            time.sleep(1)
        drive_s = time.monotonic() - t_start

        with eng.connect() as conn:
            statuses = dict(conn.execute(select(Case.status, func.count()).group_by(Case.status)).all())
            completions = dict(conn.execute(select(CaseEvent.task_id, func.count())
                                            .where(CaseEvent.type == "task_completed")
                                            .group_by(CaseEvent.task_id)).all())
            fired = dict(conn.execute(select(CaseEvent.case_id, func.count()).where(CaseEvent.type == "timer_fired")
                                      .group_by(CaseEvent.case_id)).all())
            timers = dict(conn.execute(select(Timer.status, func.count()).group_by(Timer.status)).all())
            outbox = dict(conn.execute(select(OutboxMessage.status, func.count())
                                       .group_by(OutboxMessage.status)).all())
            outbox_per_case = dict(conn.execute(select(OutboxMessage.case_id, func.count())
                                                .group_by(OutboxMessage.case_id)).all())
            total_cases = conn.scalar(select(func.count()).select_from(Case)) or 0
        eng.dispose()
        handed = [json.loads(line)["key"] for line in cluster.sms_file.read_text().splitlines() if line.strip()] \
            if cluster.sms_file.exists() else []
        cluster.sms_file.unlink(missing_ok=True)

        t0 = time.monotonic()
        verify = subprocess.run([str(BIN / "aftercare"), "audit", "verify", "--all", "--replay"], cwd=ROOT,
                                env=cluster.env, capture_output=True, text=True, timeout=600)
        verify_s = time.monotonic() - t0

    repeated = len(handed) - len(set(handed))
    checks = {
        "acknowledged completions in history exactly once": all(completions.get(t) == 1 for t in acked),
        "no task completed twice": all(n == 1 for n in completions.values()),
        "no case stuck (all completed)": statuses == {"completed": total_cases},
        "every timer fired exactly once": (len(fired) == total_cases and all(n == 1 for n in fired.values())
                                           and set(timers) <= {"fired"}),
        "every outbox message handed over exactly once": (repeated == 0 and len(set(handed)) == sum(outbox.values())
                                                          and set(outbox) <= {"sent"}
                                                          and all(n == 1 for n in outbox_per_case.values())),
        "no 5xx": not stats.server_errors,
        "audit verify --all --replay": verify.returncode == 0,
    }
    return {
        "backend": name, "cases": total_cases, "started_acknowledged": cases - sum(1 for x in lost if x.endswith(
            "/api/instances")), "completions_acknowledged": len(acked), "completions_in_history": len(completions),
        "lost_answers": len(lost), "kills": kill_log, "timers": timers, "outbox": outbox,
        "sms_handed_over": len(handed), "sms_repeated": repeated, "statuses": stats.statuses,
        "server_errors": stats.server_errors[:10], "drive_s": round(drive_s, 1), "verify_s": round(verify_s, 1),
        "verify_output": verify.stdout.strip().splitlines()[-4:] + [f"exit status {verify.returncode}"],
        "checks": checks, "ok": all(checks.values()),
    }


def main() -> int:
    from bench.cluster import DEFAULT_PG, pg_reachable, pg_schema, sqlite_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--kills", type=int, default=8, help="SIGKILLs per backend")
    ap.add_argument("--threads", type=int, default=16, help="client threads")
    ap.add_argument("--web", type=int, default=4, help="gunicorn workers")
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--pg-url", default=DEFAULT_PG)
    args = ap.parse_args()
    print(f"chaos: {args.cases} cases per backend, {args.kills} kills, {args.threads} clients, "
          f"{args.web} web workers, seed {args.seed}", flush=True)
    results = []
    started = time.monotonic()
    if args.backend in ("sqlite", "both"):
        with sqlite_file() as url:
            results.append(run_backend("sqlite", url, args.cases, args.kills, args.threads, args.web, args.seed))
            _report(results[-1])
    if args.backend in ("postgresql", "both"):
        if not pg_reachable(args.pg_url):
            print("WARNING: PostgreSQL unreachable: the PostgreSQL run did NOT happen", file=sys.stderr)
        else:
            with pg_schema(args.pg_url) as url:
                results.append(run_backend("postgresql", url, args.cases, args.kills, args.threads, args.web,
                                           args.seed))
                _report(results[-1])
    print(f"chaos: total {time.monotonic() - started:.0f} s; {'OK' if all(r['ok'] for r in results) else 'FAILED'}")
    return 0 if results and all(r["ok"] for r in results) else 1


def _report(r: dict[str, Any]) -> None:
    print(f"\n== {r['backend']}: {r['cases']} cases, driven in {r['drive_s']} s, verified in {r['verify_s']} s")
    for line in r["kills"]:
        print(f"   kill: {line}")
    print(f"   completions acknowledged {r['completions_acknowledged']}, tasks completed in history "
          f"{r['completions_in_history']}, answers lost to kills {r['lost_answers']}")
    print(f"   timers {r['timers']}, outbox {r['outbox']}, SMS handed over {r['sms_handed_over']} "
          f"(repeated {r['sms_repeated']})")
    print(f"   HTTP statuses {dict(sorted(r['statuses'].items()))}; 5xx {r['server_errors']}")
    for line in r["verify_output"]:
        print(f"   verify: {line}")
    for name, ok in r["checks"].items():
        print(f"   [{'ok' if ok else 'FAIL'}] {name}")
    sys.stdout.flush()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
