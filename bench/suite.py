"""The performance suite: every bench in one run, one table of figures, ratios and targets.

Runs bench/engine.py, growth.py, http.py, inbox.py, timers.py, replay.py and kpi.py one after
the other (each in its own process, so one's caches do not help the next), reads the figures
each prints and prints one table: bench, figure, measured, target, met. The raw output of
every bench follows the table (``--quiet`` leaves it out).

By default the sizes are small so ``make bench`` finishes in a few minutes on two cores;
``--full`` runs the sizes the issue names (100,000 open tasks, 1,000 HTTP cases per backend,
100,000 timers, 1,000,000 KPI events, ...), which takes much longer. PostgreSQL benches are
skipped (and say so) when the server is unreachable.

    .venv/bin/python bench/suite.py              # small sizes
    .venv/bin/python bench/suite.py --full       # the issue's sizes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
NUM = r"([0-9][0-9,]*\.?[0-9]*)"


@dataclass
class Row:
    bench: str
    figure: str
    value: str
    target: str = ""
    met: str = ""


def num(text: str) -> float:
    return float(text.replace(",", ""))


def run(args: list[str], timeout: float) -> tuple[str, float]:
    t = time.perf_counter()
    try:
        proc = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + (f"\n[stderr]\n{proc.stderr[-3000:]}" if proc.returncode else "")
        if proc.returncode:
            out += f"\n[exit {proc.returncode}]"
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        out = partial + f"\n[timed out {timeout} s]"
    return out, time.perf_counter() - t


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def engine_rows(out: str) -> list[Row]:
    a = re.search(r"\(a\) plain SpiffWorkflow, in memory\s+" + NUM, out)
    b = re.search(r"\(b\) Aftercare, durable commit per command\s+" + NUM, out)
    r = re.search(r"ratio \(b\)/\(a\): " + NUM, out)
    if not (a and b and r):
        return [Row("engine", "(no figures: see output)", "-")]
    ratio = num(r.group(1))
    return [Row("engine", "plain SpiffWorkflow cases/s", a.group(1)),
            Row("engine", "Aftercare cases/s (durable commit per command)", b.group(1)),
            Row("engine", "ratio Aftercare / plain", f"{ratio:.3f}", ">= 0.5", verdict(ratio >= 0.5))]


def growth_rows(out: str) -> list[Row]:
    rows = []
    for label in ("plain SpiffWorkflow (memory)", "Aftercare (durable, SQLite)"):
        m = re.search(re.escape(label) + r"\s+(\d+)\s+" + NUM + r"\s+" + NUM + r"\s+" + NUM, out)
        if m:
            ratio = num(m.group(4))
            aftercare = label.startswith("Aftercare")
            rows.append(Row("growth", f"{label}: ms/command @10 -> @{m.group(1)}",
                            f"{m.group(2)} -> {m.group(3)} (x{ratio:.2f})",
                            "<= 1.25x" if aftercare else "", verdict(ratio <= 1.25) if aftercare else ""))
    return rows or [Row("growth", "(no figures: see output)", "-")]


def json_lines(out: str) -> list[dict]:
    found = []
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
    return found


def http_rows(out: str) -> list[Row]:
    rows = []
    for r in json_lines(out):
        b = r["backend"]
        rows += [Row("http", f"{b}: completed cases/s ({r['cases']} cases)", f"{r['cases_per_s']:.1f}", ">= 100",
                     verdict(r["cases_per_s"] >= 100)),
                 Row("http", f"{b}: task completions/s", f"{r['completions_per_s']:.1f}", ">= 300",
                     verdict(r["completions_per_s"] >= 300)),
                 Row("http", f"{b}: request latency p50 / p99 ms", f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}"),
                 Row("http", f"{b}: 5xx answers, failed cases", f"{r['server_errors']}, {r['errors']}", "0, 0",
                     verdict(r["server_errors"] == 0 and r["errors"] == 0))]
    return rows or [Row("http", "(no figures: see output)", "-")]


def inbox_rows(out: str) -> list[Row]:
    rows = []
    for r in json_lines(out):
        b = f"{r['backend']} ({r['open_tasks']:,} tasks, {r['staff']:,} staff)"
        rows += [Row("inbox", f"{b}: list_tasks p50 / p95 ms", f"{r['api_p50_ms']:.1f} / {r['api_p95_ms']:.1f}",
                     "p95 <= 50", verdict(r["api_p95_ms"] <= 50)),
                 Row("inbox", f"{b}: web inbox page p50 / p95 ms", f"{r['page_p50_ms']:.1f} / {r['page_p95_ms']:.1f}",
                     "p95 <= 50", verdict(r["page_p95_ms"] <= 50))]
    return rows or [Row("inbox", "(no figures: see output)", "-")]


def timers_rows(out: str) -> list[Row]:
    rows = []
    pattern = (r"== (\w+): (\d+) worker process\(es\), " + NUM + r" pending timers, " + NUM + r" due.*?\n"
               r"\s+fired " + NUM + r"\s+duplicates (\d+)\s+lost (\d+).*?\n"
               r"\s+lateness p50 (\d+) ms\s+p99 (\d+) ms")
    for m in re.finditer(pattern, out):
        b, p99 = m.group(1), int(m.group(9))
        rows += [Row("timers", f"{b}: {m.group(4)} due of {m.group(3)} timers, {m.group(2)} worker(s): "
                     "lateness p50 / p99 ms", f"{m.group(8)} / {p99}", "p99 <= 1000", verdict(p99 <= 1000)),
                 Row("timers", f"{b}: fired, duplicates, lost", f"{m.group(5)}, {m.group(6)}, {m.group(7)}",
                     "dup 0, lost 0", verdict(m.group(6) == "0" and m.group(7) == "0"))]
    return rows or [Row("timers", "(no figures: see output)", "-")]


def replay_rows(out: str) -> list[Row]:
    rows = []
    backend = re.search(r"backend: (\S+)", out)
    b = backend.group(1) if backend else "?"
    verify = re.search(r"\(c\) verify_all.*?" + NUM + r" events/s", out)
    ratio_v = re.search(r"ratio \(c\)/\(a\): " + NUM, out)
    replay = re.search(r"\(b\) replay with verification \(history in memory\)\s+" + NUM + " s", out)
    ratio_r = re.search(r"ratio \(b\)/\(a\): " + NUM, out)
    if verify and ratio_v:
        rows.append(Row("replay", f"{b}: verify_all events/s (ratio to hashing in memory)",
                        f"{verify.group(1)} ({ratio_v.group(1)})"))
    if replay and ratio_r:
        rows.append(Row("replay", f"{b}: replay of a long case s (ratio to SpiffWorkflow re-run)",
                        f"{replay.group(1)} ({ratio_r.group(1)})"))
    return rows or [Row("replay", "(no figures: see output)", "-")]


def kpi_rows(out: str) -> list[Row]:
    rows = []
    for m in re.finditer(r"^(sqlite|postgresql)\s+" + NUM + r"\s+" + NUM + r"\s+" + NUM + r"s\s+" + NUM + "s",
                         out, re.M | re.I):
        cold = num(m.group(4))
        rows.append(Row("kpi", f"{m.group(1)} ({m.group(2)} events): one-year report cold / warm s",
                        f"{m.group(4)} / {m.group(5)}", "< 2 s", verdict(cold < 2)))
    return rows or [Row("kpi", "(no figures: see output)", "-")]


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPUs ({cpu or platform.processor()}), {mem}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the issue's sizes (long)")
    ap.add_argument("--only", nargs="*", help="run only these benches (engine growth http inbox timers replay kpi)")
    ap.add_argument("--quiet", action="store_true", help="print the table only")
    args = ap.parse_args()
    full = args.full
    http_cases = os.environ.get("AFTERCARE_SCALE_CASES", "1000" if full else "200")
    plan = {
        "engine": (["bench/engine.py", "-n", "1000" if full else "300"], engine_rows, 900),
        "growth": (["bench/growth.py", "-n", "1000" if full else "300"], growth_rows, 900),
        "http": (["bench/http.py", "--json", "--cases", http_cases, "--seconds", "120" if full else "30"],
                 http_rows, 900),
        "inbox": (["bench/inbox.py", "--json", "--tasks", "100000" if full else "20000",
                   "--engine-cases", "1000" if full else "300", "--samples", "200" if full else "100"],
                  inbox_rows, 1800),
        "timers": (["bench/timers.py"] + ([] if full else ["--timers", "5000", "--due", "1000", "--window", "5",
                                                             "--warmup", "5", "--grace", "30"]), timers_rows, 1800),
        "replay": (["bench/replay.py"] + ([] if full else ["--events", "20000", "--case-events", "500"]),
                   replay_rows, 1800),
        "kpi": (["bench/kpi.py"] + ([] if full else ["--events", "50000"]), kpi_rows, 3600),
    }
    rows: list[Row] = []
    outputs: list[tuple[str, str, float]] = []
    for name, (argv, parse, timeout) in plan.items():
        if args.only and name not in args.only:
            continue
        print(f"running {' '.join(argv)} ...", file=sys.stderr, flush=True)
        out, seconds = run(argv, timeout)
        outputs.append((name, out, seconds))
        rows += parse(out)
    widths = [max(len(getattr(r, f)) for r in [*rows, Row("bench", "figure", "measured", "target", "met")])
              for f in ("bench", "figure", "value", "target", "met")]
    print(f"Aftercare performance suite ({'full' if full else 'small'} sizes) on {machine()}")
    header = Row("bench", "figure", "measured", "target", "met")
    for i, r in enumerate([header, *rows]):
        cells = [r.bench, r.figure, r.value, r.target, r.met]
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if not args.quiet:
        for name, out, seconds in outputs:
            print(f"\n===== {name} ({seconds:.0f} s) =====\n{out.rstrip()}")


if __name__ == "__main__":
    main()
