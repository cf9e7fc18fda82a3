"""Password-guessing throttle shared by every node (scale-out): server/throttle.py's rules, with
the counts in PostgreSQL (`login_throttle`, `login_known`) and the database's clock.

A guesser who spreads attempts over the nodes meets the same delays and lockouts as on one
node. Each attempt, in one short transaction under the table's lock:
- refuses a locked key (LoginRefused);
- counts itself as a failure in advance ("presumed"), so that attempts in flight on other
  nodes already raise the delay of the next one, and a node killed mid-attempt leaves a
  failure, never a free guess;
- books its turn: it may answer at max(now, the key's busy_until) + its delay, and moves
  busy_until there, so parallel guesses on several nodes are answered one after another.
The verdict then corrects the count: a success clears the account's record, takes the
presumed failure back from the address and remembers the (account, address) pair for a day;
an attempt that ended without a verdict (the client left) takes its presumed failure back.
On one node, attempts on the same key also queue behind each other locally (KeyedLocks), so
the database sees one at a time from each node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ..db import Database, DatabaseError, Tx
from .throttle import LoginRefused, ThrottleRules

NS = 1_000_000_000
_FOR_UPDATE = {"postgresql": " FOR UPDATE", "sqlite": ""}  # SQLite's writer lock suffices
_NO_LOCK = contextlib.nullcontext()


class Verdict:
    """One login attempt's outcome, reported by the caller and written when it ends."""

    def __init__(self) -> None:
        self.outcome: bool | None = None

    def failed(self) -> None:
        self.outcome = False

    def succeeded(self) -> None:
        self.outcome = True


class SharedThrottle(ThrottleRules):
    def __init__(self, db: Database, *, prefix: str = "", **rules: Any) -> None:
        super().__init__(**rules)
        self.db = db
        self.prefix = prefix  # "c": the console's logins, counted apart from backup logins

    @contextlib.asynccontextmanager
    async def attempt(self, user: str, address: str) -> AsyncIterator[Verdict]:
        user_key, address_key = f"{self.prefix}u:{user}", f"{self.prefix}a:{address}"
        known = await asyncio.to_thread(self._is_known, user_key, address_key)
        account_lock = _NO_LOCK if known else self._serialised(user_key)
        async with account_lock, self._serialised(address_key):
            checked = (address_key,) if known else (user_key, address_key)
            wait = await asyncio.to_thread(self._reserve, checked, (user_key, address_key))
            if wait > 0:
                await asyncio.sleep(wait)
            verdict = Verdict()
            try:
                yield verdict
            finally:
                with contextlib.suppress(DatabaseError):  # the presumed failure then stands
                    await asyncio.to_thread(self._settle, user_key, address_key, verdict.outcome)

    def _is_known(self, user_key: str, address_key: str) -> bool:
        with self.db.read_transaction() as tx:
            row = tx.execute(
                "SELECT 1 FROM login_known WHERE user_key = ? AND address_key = ? AND time_ns > ?",
                (user_key, address_key, tx.now_ns() - int(self.known_for * NS)),
            ).fetchone()
        return row is not None

    def _reserve(self, checked: tuple[str, ...], keys: tuple[str, str]) -> float:
        """Refuse a locked key, or count this attempt as a failure in advance and book its
        turn; returns the seconds to wait before answering."""
        # Row locks, not the schema's lock: logins must not queue behind other writes.
        with self.db.transaction(exclusive=False) as tx:
            now = tx.now_ns()
            records = {k: self._record(tx, k, now) for k in sorted(keys)}  # one lock order
            locked = max(records[k][2] - now for k in checked)
            if locked > 0:
                raise LoginRefused(locked / NS)
            failures = max(records[k][0] for k in checked)
            delay = 0.0
            if failures >= self.free_attempts:
                delay = min(
                    self.max_delay, self.base_delay * 2.0 ** (failures - self.free_attempts)
                )
            ready = max(now, *(records[k][3] for k in checked)) + int(delay * NS)
            for key, (count, _last, locked_until, busy_until) in records.items():
                count += 1
                if lock := self.lockout_at(count):
                    locked_until = now + int(lock * NS)
                tx.execute(
                    "UPDATE login_throttle SET failures = ?, last_failure_ns = ?, "
                    "locked_until_ns = ?, busy_until_ns = ? WHERE key = ?",
                    (count, now, locked_until, ready if key in checked else busy_until, key),
                )
        return (ready - now) / NS

    def _record(self, tx: Tx, key: str, now: int) -> tuple[int, int, int, int]:
        """(failures, last failure, locked until, busy until), forgotten when old enough."""
        tx.execute(
            "INSERT INTO login_throttle(key, failures, last_failure_ns, locked_until_ns, "
            "busy_until_ns) VALUES(?, 0, 0, 0, 0) ON CONFLICT(key) DO NOTHING",
            (key,),
        )
        row = tx.execute(
            "SELECT failures, last_failure_ns, locked_until_ns, busy_until_ns "
            "FROM login_throttle WHERE key = ?" + _FOR_UPDATE[tx.dialect],
            (key,),
        ).fetchone()
        assert row is not None
        failures, last, locked_until, busy_until = (int(v) for v in row)
        if now - last > self.keep_for(failures) * NS and now >= locked_until:
            failures = 0
        return failures, last, locked_until, busy_until

    def _settle(self, user_key: str, address_key: str, outcome: bool | None) -> None:
        if outcome is False:
            return  # counted when the attempt began
        with self.db.transaction(exclusive=False) as tx:
            if outcome:
                tx.execute("DELETE FROM login_throttle WHERE key = ?", (user_key,))
                tx.execute(
                    "INSERT INTO login_known(user_key, address_key, time_ns) VALUES(?, ?, ?) "
                    "ON CONFLICT(user_key, address_key) DO UPDATE SET time_ns = excluded.time_ns",
                    (user_key, address_key, tx.now_ns()),
                )
                undo: tuple[str, ...] = (address_key,)
            else:
                undo = (user_key, address_key)
            for key in undo:
                # Take the presumed failure back, and the lockout it may have started.
                tx.execute(
                    "UPDATE login_throttle SET locked_until_ns = CASE WHEN failures % ? = 0 "
                    "THEN 0 ELSE locked_until_ns END, failures = failures - 1 "
                    "WHERE key = ? AND failures > 0",
                    (self.lockout_after, key),
                )

    def sweep(self) -> None:
        """Forget records nobody needs any more (the heartbeat calls this)."""
        with self.db.transaction() as tx:
            now = tx.now_ns()
            tx.execute(
                "DELETE FROM login_throttle WHERE locked_until_ns < ? AND busy_until_ns < ? "
                "AND last_failure_ns < ?",
                (now, now, now - int(max(self.forget_after, self.lockout_max) * NS)),
            )
