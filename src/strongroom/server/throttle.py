"""Slow down password guessing: each failed login makes the next one wait longer.

Failures are counted per user name and per client address; the delay before a login is
answered grows with the larger of the two counts, so neither guessing many passwords for one
user nor one address trying many users gets far. A success clears both counts.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class FailureThrottle:
    def __init__(
        self,
        *,
        free_attempts: int = 3,
        base_delay: float = 0.5,
        max_delay: float = 10.0,
        forget_after: float = 900.0,
        max_entries: int = 100_000,
    ) -> None:
        self.free_attempts = free_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_entries = max_entries
        # key -> (failures, time of the last failure); oldest first, so pruning is cheap.
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def _count(self, key: str, now: float) -> int:
        entry = self._failures.get(key)
        if entry is None:
            return 0
        if now - entry[1] > self.forget_after:
            del self._failures[key]
            return 0
        return entry[0]

    def delay(self, user: str, address: str) -> float:
        now = time.monotonic()
        n = max(self._count("u:" + user, now), self._count("a:" + address, now))
        if n < self.free_attempts:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2.0 ** (n - self.free_attempts)))

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        for key in ("u:" + user, "a:" + address):
            n = self._count(key, now) + 1
            self._failures[key] = (n, now)
            self._failures.move_to_end(key)
        while len(self._failures) > self.max_entries:
            self._failures.popitem(last=False)

    def succeeded(self, user: str, address: str) -> None:
        self._failures.pop("u:" + user, None)
        self._failures.pop("a:" + address, None)
