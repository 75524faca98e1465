"""Login throttling: after repeated failures a username is locked for a while at the address they
came from; an address guessing many usernames, and a username guessed from many addresses, are
locked too, at higher counts. Locking a username everywhere after a few failures would let anyone
lock any staff member out."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from engine import EngineError


class TooManyAttempts(EngineError):
    status = 429


class LoginThrottle:
    def __init__(self, max_failures: int = 5, window_s: float = 900.0, lockout_s: float = 900.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def _limits(self, username: str, address: str) -> tuple[tuple[str, int], ...]:
        """(key, failures that lock it): the pair first, then the address, then the username."""
        name = username.lower()
        return ((f"pair:{name}@{address}", self.max_failures), (f"addr:{address}", self.max_failures * 4),
                (f"user:{name}", self.max_failures * 10))

    def check(self, username: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key, _limit in self._limits(username, address):
                until = self._locked_until.get(key, 0.0)
                if until > now:
                    raise TooManyAttempts(f"too many failed logins; try again in {int(until - now) + 1} s")

    def failed(self, username: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key, limit in self._limits(username, address):
                q = self._failures[key]
                q.append(now)
                while q and q[0] < now - self.window_s:
                    q.popleft()
                if len(q) >= limit:
                    self._locked_until[key] = now + self.lockout_s
                    q.clear()

    def succeeded(self, username: str, address: str) -> None:
        with self._lock:
            self._failures.pop(self._limits(username, address)[0][0], None)
