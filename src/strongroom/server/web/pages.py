"""What the console's pages show, gathered in one blocking call each (run in a thread)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ...retention import Policy
from ..operations import snapshot_sizes
from ..opsdb import DAY_NS
from ..overview import AccountStatus, account_status, all_statuses, disk_status
from ..runs import last_run
from ..userdb import format_window

if TYPE_CHECKING:
    from ..context import ServerContext

HISTORY_DAYS = 30  # the charts, and the growth the "estimated full" date extrapolates


def dashboard_page(ctx: ServerContext) -> dict[str, Any]:
    statuses = all_statuses(ctx.userdb, ctx.backend.storage, ctx.config.expected_interval)
    since = time.time_ns() - HISTORY_DAYS * DAY_NS
    history = ctx.ops.total_usage(since)
    disk = disk_status(ctx.datadir.root, history)
    alerts = ctx.ops.alerts()
    names = {st.user.id: st.user.name for st in statuses}
    return {
        "statuses": statuses,
        "totals": {
            "users": len(statuses),
            "stored": sum(st.stored_bytes for st in statuses),
            "snapshots": sum(st.snapshots for st in statuses),
            "quota": sum(st.user.quota or 0 for st in statuses),
            "attention": sum(st.state in ("stale", "never", "failed", "quota") for st in statuses),
        },
        "disk": disk,
        "alerts": [(names.get(a.user_id, "server"), a) for a in alerts],
        "last_gc": last_run(ctx.userdb, "gc"),
        "last_scrub": last_run(ctx.userdb, "scrub"),
        "chart": _chart([(p.time_ns, p.stored_bytes, p.snapshots) for p in history]),
        "default_interval": ctx.config.expected_interval,
    }


def user_page(ctx: ServerContext, name: str) -> dict[str, Any] | None:
    user = ctx.userdb.get(name)
    if user is None:
        return None
    status: AccountStatus = account_status(user, ctx.backend.storage, ctx.config.expected_interval)
    rows = []
    if ctx.backend.storage.exists(user.storage_id):
        store = ctx.backend.storage.open(user.storage_id, writer=False)
        try:
            rows = store.list_snapshots()
        finally:
            store.close()
    sizes = snapshot_sizes(ctx, user)
    since = time.time_ns() - HISTORY_DAYS * DAY_NS
    history = ctx.ops.usage(user.id, since)
    policy = ctx.policy_for(user)
    own_policy = Policy.from_json(json.loads(user.policy)) if user.policy else None
    return {
        "st": status,
        "user": user,
        "snapshots": [(r, sizes.get(r.snap_id, 0)) for r in reversed(rows)],
        "events": ctx.ops.events(user.id),
        "chart": _chart([(p.time_ns, p.stored_bytes, p.snapshots) for p in history]),
        "policy": policy.describe() if policy is not None else "none (keep everything)",
        "own_policy": own_policy,
        "window": format_window(user.protect_window_s),
        "last_gc": last_run(ctx.userdb, "gc", user),
        "last_scrub": last_run(ctx.userdb, "scrub", user),
        "alerts": [a for a in ctx.ops.alerts() if a.user_id == user.id],
        "default_interval": ctx.config.expected_interval,
    }


def _chart(points: list[tuple[int, int, int]]) -> str:
    """Chart data for a <script type="application/json"> block (data, never executed)."""
    data = [{"t": t // 1_000_000, "bytes": b, "snapshots": s} for t, b, s in points]
    return json.dumps(data).replace("<", "\\u003c")
