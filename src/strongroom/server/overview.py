"""What the server knows about each account, in one place: the console's tables, /metrics and
the alerts all read it. Only what the server can know without a key: sizes, counts, times,
outcomes; never a file name.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .backend import Storage
from .opsdb import OpsDB, UsagePoint
from .quota import charge
from .userdb import User, UserDB

QUOTA_WARNING = 0.9  # quota use that raises an alert and a badge
NS = 1_000_000_000


@dataclass(frozen=True)
class AccountStatus:
    user: User
    stored_bytes: int  # bytes in packs
    quota_used_bytes: int  # what the quota counts (packs plus the index charge)
    snapshots: int
    expected_interval_s: int
    overdue: bool  # no success within the expected interval (a new account: since creation)
    state: str  # "ok", "new", "stale", "never", "failed", "quota" (most pressing first)

    @property
    def quota_fraction(self) -> float | None:
        return None if self.user.quota is None else self.quota_used_bytes / self.user.quota

    @property
    def seconds_since_success(self) -> float | None:
        last = self.user.last_success_ns
        return None if last is None else max(0.0, (time.time_ns() - last) / NS)


@dataclass(frozen=True)
class DiskStatus:
    total_bytes: int
    free_bytes: int
    estimated_full_ns: int | None  # when the growth of the last 30 days fills the disk


def account_status(user: User, storage: Storage, default_interval_s: float) -> AccountStatus:
    stored = charged = snapshots = 0
    if storage.exists(user.storage_id):
        # A reader: the server may write meanwhile (WAL; in PostgreSQL, other nodes too).
        store = storage.open(user.storage_id, writer=False)
        try:
            counts = store.charge_counts()
            stored, charged, snapshots = counts[0], charge(counts), counts[2]
        finally:
            store.close()
    interval = int(user.expected_interval_s or default_interval_s)
    since = user.last_success_ns if user.last_success_ns is not None else user.created_ns
    overdue = time.time_ns() - since > interval * NS
    if overdue:
        state = "stale" if user.last_success_ns is not None else "never"
    elif (user.last_backup_result or "").startswith("failed"):
        state = "failed"
    elif user.quota is not None and charged >= QUOTA_WARNING * user.quota:
        state = "quota"
    elif user.last_success_ns is None:
        state = "new"  # no backup yet, still within its first interval
    else:
        state = "ok"
    return AccountStatus(user, stored, charged, snapshots, interval, overdue, state)


def all_statuses(
    userdb: UserDB, storage: Storage, default_interval_s: float
) -> list[AccountStatus]:
    return [account_status(u, storage, default_interval_s) for u in userdb.list()]


def disk_status(root: Path, history: list[UsagePoint]) -> DiskStatus:
    usage = shutil.disk_usage(root)
    return DiskStatus(usage.total, usage.free, estimate_full(history, usage.free))


def estimate_full(history: list[UsagePoint], free_bytes: int) -> int | None:
    """When the stored bytes, growing as they did over the points given (a least-squares line
    through them), would use up `free_bytes`; None if they do not grow."""
    if len(history) < 2:
        return None
    t0 = history[0].time_ns
    xs = [(p.time_ns - t0) / NS for p in history]
    ys = [float(p.stored_bytes) for p in history]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if var <= 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
    if slope <= 0:
        return None
    seconds = free_bytes / slope
    if seconds > 100 * 365 * 86400:
        return None
    return time.time_ns() + int(seconds * NS)


def record_daily_usage(ops: OpsDB, statuses: list[AccountStatus]) -> None:
    """Each account's point for today (kept once a day), for the charts and the estimate."""
    for st in statuses:
        ops.record_usage(st.user.id, st.stored_bytes, st.snapshots, "day")
