"""Who may hold a connection: bounds that keep one host or one account from taking them all.

A connection takes a slot when TCP accepts it, before the TLS handshake (handshakes cost the
server CPU and used to be free). Until it logs in it also counts against its address group's
unauthenticated limit and against a limit on all unauthenticated connections (half the slots),
so that hosts which never log in cannot take the slots logged-in sessions need; once logged in,
it counts against the account's limit. All on the event loop's thread, so no locks.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass(eq=False)
class Slot:
    group: str  # address group (server/throttle.address_group)
    user_id: int | None = None


class ConnectionLimits:
    def __init__(self, max_total: int, max_unauthenticated_per_group: int, max_per_user: int):
        self.max_total = max_total
        self.max_unauthenticated = max_unauthenticated_per_group
        self.max_unauthenticated_total = max(1, max_total // 2)
        self.max_per_user = max_per_user
        self.total = 0
        self.unauthenticated: dict[str, int] = {}
        self.unauthenticated_total = 0
        self.per_user: dict[int, int] = {}

    def open(self, group: str) -> Slot | str:
        """A slot for a new connection, or why there is none."""
        if self.total >= self.max_total or (
            self.unauthenticated_total >= self.max_unauthenticated_total
        ):
            return "server is busy, retry later"
        if self.unauthenticated.get(group, 0) >= self.max_unauthenticated:
            return "too many connections from your address that have not logged in; retry later"
        self.total += 1
        self.unauthenticated_total += 1
        self.unauthenticated[group] = self.unauthenticated.get(group, 0) + 1
        return Slot(group)

    def authenticate(self, slot: Slot, user_id: int) -> str | None:
        """Move a slot from its address to an account; why not, if the account is full."""
        if self.per_user.get(user_id, 0) >= self.max_per_user:
            return (
                f"this account already has {self.max_per_user} connections open; "
                "retry when one has finished"
            )
        self._drop_unauthenticated(slot.group)
        slot.user_id = user_id
        self.per_user[user_id] = self.per_user.get(user_id, 0) + 1
        return None

    def close(self, slot: Slot) -> None:
        self.total -= 1
        if slot.user_id is None:
            self._drop_unauthenticated(slot.group)
            return
        left = self.per_user.get(slot.user_id, 1) - 1
        if left:
            self.per_user[slot.user_id] = left
        else:
            self.per_user.pop(slot.user_id, None)

    def _drop_unauthenticated(self, group: str) -> None:
        self.unauthenticated_total -= 1
        left = self.unauthenticated.get(group, 1) - 1
        if left:
            self.unauthenticated[group] = left
        else:
            self.unauthenticated.pop(group, None)


class CommitRate:
    """Commits per account in a sliding hour (per server process: a restart forgets them,
    which only an admin can cause; several nodes count in PostgreSQL: nodes.SharedCommitRate).
    Called from threads."""

    WINDOW = 3600.0

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._times: dict[int, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, user_id: int) -> bool:
        """Count one commit attempt; False if the account is over its hourly bound."""
        with self._lock:
            return self._allow(user_id)

    def _allow(self, user_id: int) -> bool:
        now = time.monotonic()
        times = self._times.setdefault(user_id, deque())
        while times and now - times[0] > self.WINDOW:
            times.popleft()
        if len(times) >= self.per_hour:
            return False
        times.append(now)
        return True
