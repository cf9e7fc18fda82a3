"""Prometheus metrics (`/metrics` on the console port): server counters the sessions update,
and per-account gauges read from the user database and stores at scrape time.

Names follow Prometheus conventions: `strongroom_…_total` for counters, `_bytes`, `_seconds`.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .overview import AccountStatus

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)
_STATUS_CACHE_S = 10.0  # a scrape every few seconds must not reopen every store each time


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections_open = Gauge(
            "strongroom_open_connections", "Client connections open now", registry=r
        )
        self.connections = Counter(
            "strongroom_connections", "Client connections accepted", registry=r
        )
        self.received = Counter(
            "strongroom_received_bytes", "Bytes received from clients (frames)", registry=r
        )
        self.sent = Counter("strongroom_sent_bytes", "Bytes sent to clients (frames)", registry=r)
        self.commits = Counter(
            "strongroom_commits", "Snapshot commits, by result", ["result"], registry=r
        )
        self.auth_failures = Counter(
            "strongroom_auth_failures", "Failed or refused logins (backup protocol)", registry=r
        )
        self.gc_runs = Counter("strongroom_gc_runs", "Garbage collections run", registry=r)
        self.gc_reclaimed = Counter(
            "strongroom_gc_reclaimed_bytes", "Bytes reclaimed by garbage collection", registry=r
        )
        self.request_seconds = Histogram(
            "strongroom_request_duration_seconds",
            "Time from a request's arrival to its answer, by request type",
            ["request"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def watch_accounts(self, statuses: Callable[[], list[AccountStatus]], data_dir: Path) -> None:
        """Add the per-account and disk gauges, read when scraped (cached briefly)."""
        self.registry.register(_AccountCollector(statuses, data_dir))


class _AccountCollector(Collector):
    def __init__(self, statuses: Callable[[], list[AccountStatus]], data_dir: Path) -> None:
        self._statuses = statuses
        self._data_dir = data_dir
        self._lock = threading.Lock()
        self._cached: tuple[float, list[AccountStatus]] | None = None

    def _current(self) -> list[AccountStatus]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > _STATUS_CACHE_S:
                self._cached = (now, self._statuses())
            return self._cached[1]

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # the families depend on the accounts; nothing to check up front

    def collect(self) -> Iterator[GaugeMetricFamily]:
        statuses = self._current()
        user = ["user"]
        stored = GaugeMetricFamily(
            "strongroom_user_stored_bytes", "Bytes in the account's packs", labels=user
        )
        used = GaugeMetricFamily(
            "strongroom_user_quota_used_bytes",
            "What the account's quota counts (packs and index)",
            labels=user,
        )
        quota = GaugeMetricFamily(
            "strongroom_user_quota_bytes", "The account's quota (absent: none)", labels=user
        )
        snaps = GaugeMetricFamily(
            "strongroom_user_snapshots", "Snapshots the account holds", labels=user
        )
        last = GaugeMetricFamily(
            "strongroom_user_last_backup_timestamp_seconds",
            "When the account's last backup ended (success or not)",
            labels=user,
        )
        ok = GaugeMetricFamily(
            "strongroom_user_last_backup_success",
            "1 if the account's last backup succeeded, 0 if it failed",
            labels=user,
        )
        since = GaugeMetricFamily(
            "strongroom_user_seconds_since_last_success",
            "Seconds since the account's last successful backup",
            labels=user,
        )
        overdue = GaugeMetricFamily(
            "strongroom_user_backup_overdue",
            "1 if no backup succeeded within the account's expected interval",
            labels=user,
        )
        for st in statuses:
            name = [st.user.name]
            stored.add_metric(name, st.stored_bytes)
            used.add_metric(name, st.quota_used_bytes)
            snaps.add_metric(name, st.snapshots)
            overdue.add_metric(name, int(st.overdue))
            if st.user.quota is not None:
                quota.add_metric(name, st.user.quota)
            if st.user.last_backup_ns is not None:
                last.add_metric(name, st.user.last_backup_ns / 1e9)
                ok.add_metric(name, int(st.user.last_backup_result == "ok"))
            if st.seconds_since_success is not None:
                since.add_metric(name, st.seconds_since_success)
        disk = shutil.disk_usage(self._data_dir)
        free = GaugeMetricFamily(
            "strongroom_disk_free_bytes", "Free bytes on the data folder's file system"
        )
        free.add_metric([], disk.free)
        total = GaugeMetricFamily(
            "strongroom_disk_size_bytes", "Size of the data folder's file system"
        )
        total.add_metric([], disk.total)
        users = GaugeMetricFamily("strongroom_users", "Backup accounts")
        users.add_metric([], len(statuses))
        yield from (stored, used, quota, snaps, last, ok, since, overdue, free, total, users)
