"""Complaints over HTTP: gunicorn web workers on one database, SQLite and PostgreSQL.

A complaint-like process of three user tasks with forms (register, investigate, resolve;
tests/scale_processes/bench_complaint.bpmn) is driven over HTTP against
``gunicorn -w N 'app:create_app()'`` on 127.0.0.1: each client thread starts a case and
completes its three tasks, one request after the other, as a staff member's browser would.
Printed per backend: completed cases/s, task completions/s, p50/p99 request latency and the
count of 5xx answers. Targets: >= 100 cases/s and >= 300 task completions/s. The client
threads share the machine's cores with the server.

The loop is bounded in count (``--cases``) and time (``--seconds``); requests go only to
127.0.0.1. The server side is ``bench.cluster.Cluster``, which the scale-out test uses too.

    .venv/bin/python bench/http.py                          # SQLite and PostgreSQL, 1,000 cases each
    .venv/bin/python bench/http.py --cases 300 --backend postgresql
"""

from __future__ import annotations

import sys

if __name__ == "http":
    # Scripts in this folder (run as ``python bench/x.py``) have it first on sys.path, so this
    # file is found as the standard library's ``http``: load the real package in its place.
    import importlib.util
    import os
    import sysconfig

    _init = os.path.join(sysconfig.get_paths()["stdlib"], "http", "__init__.py")
    _spec = importlib.util.spec_from_file_location("http", _init, submodule_search_locations=[os.path.dirname(_init)])
    assert _spec is not None and _spec.loader is not None
    _real = importlib.util.module_from_spec(_spec)
    sys.modules["http"] = _real
    _spec.loader.exec_module(_real)
elif __name__ == "__main__":
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.cluster import main

    main(__doc__)
