"""Aftercare as deployed: migrate once, then gunicorn web workers and timer workers on one URL.

``Cluster`` runs ``aftercare init`` once, then ``gunicorn -w N 'app:create_app()'`` and M
``aftercare worker`` processes on one database (the topology of docs/deployment.md); ``Client``
talks to it over HTTP on 127.0.0.1 with a bearer token. Used by ``bench/http.py`` and the
scale-out test. ``main`` is the HTTP bench (see bench/http.py).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = os.environ.get("AFTERCARE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PROCESSES = ROOT / "tests" / "scale_processes"
PASSWORD = "scale-test-password"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_reachable(url: str = DEFAULT_PG) -> bool:
    try:
        eng = create_engine(url, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def pg_schema(url: str = DEFAULT_PG) -> Iterator[str]:
    """A fresh schema on the PostgreSQL server, dropped afterwards; yields a URL whose search_path is it."""
    schema = f"aftercare_scale_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextlib.contextmanager
def sqlite_file() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="aftercare-http-")
    try:
        yield f"sqlite:///{folder}/aftercare.db"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- the topology ------------------------------------------------------------------------------


@dataclass
class Cluster:
    """``aftercare init`` once, then ``web`` gunicorn workers and ``timer_workers`` timer workers on one URL."""

    url: str
    web: int = 4
    timer_workers: int = 0
    users: tuple[str, ...] = ("agent",)
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aftercare-cluster-")))

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(AFTERCARE_DATABASE_URL=self.url, AFTERCARE_SCHEDULER="off",
                   AFTERCARE_SECRET_KEY="scale-" + self.folder.name,
                   AFTERCARE_PROCESSES_DIR=str(PROCESSES), AFTERCARE_FORMS_DIR=str(self.folder / "forms"),
                   PYTHONPATH=str(ROOT))
        return env

    def _cli(self, *args: str) -> None:
        subprocess.run([str(BIN / "aftercare"), *args], cwd=ROOT, env=self.env, check=True,
                       stdout=subprocess.DEVNULL, timeout=300)

    def _add_users(self) -> None:
        from engine import Database
        from engine.identity import add_user

        db = Database(self.url)
        with db.write() as s:
            for user in self.users:
                add_user(s, user, PASSWORD, ["complaints"])
        db.engine.dispose()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def __enter__(self) -> Cluster:
        try:
            self._cli("init")  # migrations and deployment run once, before any worker starts
            self._add_users()
            self._spawn("gunicorn", [str(BIN / "gunicorn"), "-w", str(self.web), "-b", f"127.0.0.1:{self.port}",
                                     "--timeout", "120", "--log-level", "warning", "app:create_app()"])
            for i in range(self.timer_workers):
                self._spawn(f"worker{i}", [str(BIN / "aftercare"), "worker", "--name", f"scale-worker-{i}",
                                           "--sweep", "1"])
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_healthy(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a server process exited early ({p.args[0]}): {self.logs()}")
            try:
                if Client(self.port).call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the web workers did not become healthy: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.folder.glob("*.log"))

    def stop(self) -> None:
        """Stop every child process (and its children: gunicorn's workers) by process group."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        self.procs.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    def token(self, user: str) -> str:
        status, body, _ = Client(self.port).call("POST", "/api/auth/token", {"username": user, "password": PASSWORD})
        if status != 200:
            raise RuntimeError(f"no token for {user}: {status} {body}")
        return str(body["token"])


# --- the client ----------------------------------------------------------------------------------


class Client:
    """One keep-alive connection to 127.0.0.1 (reopened when the server closes it) with a bearer token."""

    def __init__(self, port: int, token: str | None = None, stats: Stats | None = None) -> None:
        self.port, self.token, self.stats = port, token, stats
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        t0 = time.perf_counter()
        try:
            self.conn.request(method, path, payload, headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (http.client.HTTPException, ConnectionError):
            # The sync worker closed a kept-alive connection: retry once on a fresh one.
            self.conn.close()
            self.conn.request(method, path, payload, headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        seconds = time.perf_counter() - t0
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw.decode(errors="replace")
        if self.stats is not None:
            self.stats.add(method, path, resp.status, seconds)
        return resp.status, data, seconds

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data, _ = self.call(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path} -> {status}: {data}")
        return data


class Stats:
    """Request latencies and statuses, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latencies: list[float] = []
        self.completions: list[float] = []
        self.server_errors: list[str] = []
        self.statuses: dict[int, int] = {}

    def add(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.latencies.append(seconds)
            if path.endswith("/complete") and status == 200:
                self.completions.append(seconds)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status >= 500:
                self.server_errors.append(f"{method} {path} -> {status}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ready_task(instance: dict[str, Any], spec: str) -> str | None:
    for t in instance.get("tasks", []):
        if t.get("spec") == spec and t.get("state") in ("ready", "claimed"):
            return str(t["id"])
    return None


FORMS: dict[str, dict[str, Any]] = {
    "register": {"customer_name": "王芳 Wang Fang", "category": "quality"},
    "investigate": {"finding": "Seal worn after 14 months", "root_cause": "wear"},
    "resolve": {"resolution": "Seal replaced at no charge", "satisfied": True},
}


def complaint_case(client: Client, i: int) -> int:
    """Start one three-task complaint and complete its tasks in order; returns completions done."""
    inst = client.ok("POST", "/api/instances", {"process": "bench_complaint", "data": {"n": i}})
    done = 0
    for spec in ("register", "investigate", "resolve"):
        task = ready_task(inst, spec)
        if task is None:
            raise RuntimeError(f"case {inst['id']}: no open {spec} task")
        inst = client.ok("POST", f"/api/tasks/{task}/complete", {"data": FORMS[spec]})
        done += 1
    if inst["status"] != "completed":
        raise RuntimeError(f"case {inst['id']} ended {inst['status']}")
    return done


def run_backend(name: str, url: str, cases: int, seconds: float, threads: int, web: int) -> dict[str, Any]:
    users = tuple(f"clerk{i}" for i in range(threads))
    with Cluster(url, web=web, users=users) as cluster:
        tokens = [cluster.token(u) for u in users]
        stats = Stats()
        counter = iter(range(cases))
        lock = threading.Lock()
        deadline = time.monotonic() + seconds
        totals = {"cases": 0, "completions": 0, "errors": 0}

        def loop(token: str) -> None:
            client = Client(cluster.port, token, stats)
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                try:
                    n = complaint_case(client, i)
                    with lock:
                        totals["cases"] += 1
                        totals["completions"] += n
                except Exception as exc:  # counted and reported; the bench goes on
                    with lock:
                        totals["errors"] += 1
                    print(f"  {name}: {exc}", file=sys.stderr)

        # Warm each worker (imports, caches, parsed diagrams) before the clock starts.
        warm = Client(cluster.port, tokens[0])
        for i in range(web * 2):
            complaint_case(warm, -1 - i)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(loop, tokens))
        wall = time.perf_counter() - t0
    return {
        "backend": name, "cases": totals["cases"], "errors": totals["errors"], "seconds": wall,
        "cases_per_s": totals["cases"] / wall, "completions_per_s": totals["completions"] / wall,
        "p50_ms": percentile(stats.latencies, 0.50) * 1000, "p99_ms": percentile(stats.latencies, 0.99) * 1000,
        "server_errors": len(stats.server_errors),
    }


def main(description: str | None = None) -> None:
    ap = argparse.ArgumentParser(description=description or __doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000, help="cases per backend (upper bound)")
    ap.add_argument("--seconds", type=float, default=120.0, help="time bound per backend")
    ap.add_argument("--threads", type=int, default=8, help="client threads")
    ap.add_argument("--web", type=int, default=4, help="gunicorn workers")
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--pg-url", default=DEFAULT_PG)
    ap.add_argument("--json", action="store_true", help="print one JSON line per backend")
    args = ap.parse_args()
    results = []
    if args.backend in ("sqlite", "both"):
        with sqlite_file() as url:
            results.append(run_backend("sqlite", url, args.cases, args.seconds, args.threads, args.web))
    if args.backend in ("postgresql", "both"):
        if not pg_reachable(args.pg_url):
            print("WARNING: PostgreSQL unreachable: skipped", file=sys.stderr)
        else:
            with pg_schema(args.pg_url) as url:
                results.append(run_backend("postgresql", url, args.cases, args.seconds, args.threads, args.web))
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['backend']:<11} {r['cases']} cases in {r['seconds']:.1f} s: {r['cases_per_s']:.1f} cases/s "
                  f"(target >= 100), {r['completions_per_s']:.1f} task completions/s (target >= 300), "
                  f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, 5xx {r['server_errors']}, "
                  f"failed cases {r['errors']}")

