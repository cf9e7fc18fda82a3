"""Slow down password guessing: per account and per client address.

- Attempts for one account, and from one address, are serialised: 64 parallel connections get
  their answers one after another, each after the delay the failures before it earned, instead
  of 64 guesses at once.
- After `free_attempts` failures each further answer waits 0.5 s, 1 s, 2 s … up to `max_delay`.
  Every `lockout_after` failures the key is locked: attempts are refused unanswered for 1 min,
  then 2, 4 … up to `lockout_max` (escalating lockouts).
- A success clears the account's count only. The address keeps its count, so an attacker who
  owns an account cannot wipe their address's record by logging into it between guesses.
- A success also marks that (account, address) pair as known for a day: the account's owner,
  back at an address they logged in from, neither queues behind a stranger's guesses nor is
  held by the account's lockout (their address's own count still applies). Guessing a name
  therefore cannot lock its owner out from where they usually log in.
- Counts are forgotten `forget_after` seconds after the last failure; a key that was ever
  locked keeps its count for `lockout_max`, so lockouts keep growing (1 min … 1 h) instead of
  starting over after a quiet quarter of an hour. Locked keys are never evicted to make room.

Keys are the case-folded user name ("u:") and the address group ("a:": an IPv4 address, or the
/56 of an IPv6 one, what one customer of an ISP usually holds whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


def address_group(host: str) -> str:
    """The unit a client address is counted in: IPv4 address, IPv6 /56."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 56), strict=False))
    return str(addr)


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0


_NO_LOCK = contextlib.nullcontext()


class KeyedLocks:
    """One asyncio lock per key, held in the table only while someone uses it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, users of it)

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]  # nobody waits: the table holds only keys in use
            else:
                self._locks[key] = (lock, users - 1)


class LoginRefused(Exception):
    """The key is locked out; `retry_after` seconds until attempts are answered again."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"locked for {retry_after:.0f} s")
        self.retry_after = retry_after


class Attempt:
    """One login attempt in progress; the caller reports its outcome."""

    def __init__(self, throttle: FailureThrottle, user_key: str, address_key: str) -> None:
        self._throttle = throttle
        self._keys = (user_key, address_key)
        self.outcome: bool | None = None

    def failed(self) -> None:
        self.outcome = False
        for key in self._keys:
            self._throttle._record_failure(key)

    def succeeded(self) -> None:
        self.outcome = True
        self._throttle._records.pop(self._keys[0], None)  # the account only, never the address
        self._throttle._remember_pair(*self._keys)


class ThrottleRules:
    """The numbers both throttles apply (this one in memory, shared_throttle.py across nodes)."""

    def __init__(
        self,
        *,
        free_attempts: int = 3,
        base_delay: float = 0.5,
        max_delay: float = 10.0,
        lockout_after: int = 10,
        lockout_base: float = 60.0,
        lockout_max: float = 3600.0,
        forget_after: float = 900.0,
        max_entries: int = 100_000,
        known_for: float = 86400.0,
    ) -> None:
        self.free_attempts = free_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.lockout_after = lockout_after
        self.lockout_base = lockout_base
        self.lockout_max = lockout_max
        self.forget_after = forget_after
        self.max_entries = max_entries
        self.known_for = known_for
        self._serialised = KeyedLocks()

    def delay_after(self, failures: int) -> float:
        """Seconds an answer waits after this many failures."""
        if failures < self.free_attempts:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2.0 ** (failures - self.free_attempts)))

    def lockout_at(self, failures: int) -> float:
        """Seconds the key is locked when it reaches this many failures (0: not now)."""
        if failures % self.lockout_after:
            return 0.0
        step = failures // self.lockout_after - 1
        return float(min(self.lockout_max, self.lockout_base * 2.0**step))

    def keep_for(self, failures: int) -> float:
        """How long a record is kept after its last failure: a key that was ever locked keeps
        escalating for lockout_max."""
        if failures >= self.lockout_after:
            return max(self.forget_after, self.lockout_max)
        return self.forget_after


class FailureThrottle(ThrottleRules):
    def __init__(self, **rules: Any) -> None:
        super().__init__(**rules)
        # (account key, address key) -> time of the last success, oldest first
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()
        # key -> record; least recently failed first, so pruning is cheap.
        self._records: OrderedDict[str, _Record] = OrderedDict()

    # ---- the async entry point --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def attempt(self, user: str, address: str) -> AsyncIterator[Attempt]:
        """Serialise with other attempts on the same account or address, refuse a locked key
        (LoginRefused), wait the earned delay, then let the caller check the password."""
        user_key, address_key = "u:" + user, "a:" + address
        known = self._is_known(user_key, address_key)
        # The owner at a known address skips the account's queue and lockout (not the
        # address's): a stranger's guesses at the name cannot lock them out.
        account_lock = _NO_LOCK if known else self._serialised(user_key)
        async with account_lock, self._serialised(address_key):
            now = time.monotonic()
            keys = (address_key,) if known else (user_key, address_key)
            locked = max(self._locked_for(k, now) for k in keys)
            if locked > 0:
                raise LoginRefused(locked)
            delay = self._delay_for(keys, now)
            if delay:
                await asyncio.sleep(delay)
            yield Attempt(self, user_key, address_key)

    # ---- bookkeeping ------------------------------------------------------------------------

    def _record(self, key: str, now: float) -> _Record | None:
        rec = self._records.get(key)
        if rec is None:
            return None
        if now - rec.last_failure > self.keep_for(rec.failures) and now >= rec.locked_until:
            del self._records[key]
            return None
        return rec

    def _remember_pair(self, user_key: str, address_key: str) -> None:
        pair = (user_key, address_key)
        self._known[pair] = time.monotonic()
        self._known.move_to_end(pair)
        while len(self._known) > self.max_entries:
            self._known.popitem(last=False)

    def _is_known(self, user_key: str, address_key: str) -> bool:
        when = self._known.get((user_key, address_key))
        if when is None:
            return False
        if time.monotonic() - when > self.known_for:
            del self._known[(user_key, address_key)]
            return False
        return True

    def _locked_for(self, key: str, now: float) -> float:
        rec = self._record(key, now)
        return max(0.0, rec.locked_until - now) if rec is not None else 0.0

    def failures(self, key: str) -> int:
        rec = self._record(key, time.monotonic())
        return rec.failures if rec is not None else 0

    def delay(self, user: str, address: str) -> float:
        return self._delay_for(("u:" + user, "a:" + address), time.monotonic())

    def _delay_for(self, keys: tuple[str, ...], now: float) -> float:
        counts = [self._record(k, now) for k in keys]
        return self.delay_after(max((r.failures for r in counts if r is not None), default=0))

    def _record_failure(self, key: str) -> None:
        now = time.monotonic()
        rec = self._record(key, now) or _Record()
        rec.failures += 1
        rec.last_failure = now
        if lock := self.lockout_at(rec.failures):
            rec.locked_until = now + lock
        self._records[key] = rec
        self._records.move_to_end(key)
        self._prune(now)

    def _prune(self, now: float) -> None:
        """Keep the table bounded, oldest first, but never drop a key that is locked: a flood
        of fresh names must not wipe a lockout."""
        for _ in range(len(self._records)):
            if len(self._records) <= self.max_entries:
                return
            key, rec = next(iter(self._records.items()))
            if rec.locked_until > now:
                self._records.move_to_end(key)  # kept: looked at again only after the others
            else:
                del self._records[key]
