"""Settings for a long-running engine process (web worker, timer worker)."""

from __future__ import annotations

import gc
import threading

_tuned = threading.Event()


def tune_garbage_collector(young: int = 20_000) -> None:
    """Once per process: freeze what start-up allocated and collect young objects less often.

    A command allocates thousands of short-lived dicts and lists, so Python's default (a young
    collection every 700 allocations) runs several collections per command, and every so often
    a full one that walks every live object, including the parsed process definitions and the
    case cache (thousands of workflows). Freezing moves start-up objects out of the collector's
    sight; a larger young generation makes collections rarer. Reference counting still frees
    almost everything at once; only reference cycles wait longer for a collection.
    """
    if _tuned.is_set():
        return
    _tuned.set()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
