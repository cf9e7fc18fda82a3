"""The last GC and scrub of each account and of the server, kept for the dashboard and alerts.

Separate from operations.py so that the server's shared context can record a run without
importing the operations (which import the control socket, which needs the context).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .userdb import User, UserDB


@dataclass(frozen=True)
class RunRecord:
    """The last GC or scrub of an account (or of the server), as the dashboard shows it."""

    time_ns: int
    user: str
    summary: str
    ok: bool


def record_scrub(userdb: UserDB, user: User, report: dict[str, Any]) -> None:
    """Keep a scrub's outcome for the dashboard and the alerts (the admin tool's scrub too)."""
    problems = len(report.get("problems", []))
    summary = f"{report.get('packs', 0)} packs, {report.get('blobs', 0)} blobs: " + (
        "ok" if problems == 0 else f"{problems} problem(s)"
    )
    record_run(userdb, "scrub", user, summary, problems == 0)


def record_run(userdb: UserDB, kind: str, user: User, summary: str, ok: bool) -> None:
    value = json.dumps({"time_ns": time.time_ns(), "user": user.name, "summary": summary, "ok": ok})
    userdb.set_setting(f"run:{kind}", value)
    userdb.set_setting(f"run:{kind}:{user.id}", value)


def last_run(userdb: UserDB, kind: str, user: User | None = None) -> RunRecord | None:
    raw = userdb.get_setting(f"run:{kind}" if user is None else f"run:{kind}:{user.id}")
    if raw is None:
        return None
    try:
        obj = json.loads(raw)
        return RunRecord(
            int(obj["time_ns"]), str(obj["user"]), str(obj["summary"]), bool(obj["ok"])
        )
    except (ValueError, KeyError, TypeError):
        return None
