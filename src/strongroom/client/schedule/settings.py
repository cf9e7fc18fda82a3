"""What `schedule enable` decided (schedule.json) and what the last run did (schedule-status.json).

Both live in the client's config folder, are written atomically with mode 0600, and never hold
a password: only where the password is (a file's path, or "in the OS keyring").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import StrongroomError
from ..config import config_dir
from .spec import Schedule

SETTINGS_NAME = "schedule.json"
STATUS_NAME = "schedule-status.json"
# The password file enable writes when none is given (a file name, not a password).
PASSWORD_NAME = "schedule-password"  # noqa: S105

DEFAULT_TRIES = 3
DEFAULT_RETRY_DELAY = 300.0  # seconds; doubled after each try: 5 + 10 min = ~15 min in all


def write_private(path: Path, data: bytes) -> None:
    """Atomic write with mode 0600 (the folder made 0700 if new)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class ScheduleSettings:
    schedule: Schedule
    platform: str  # "systemd", "launchd" or "windows"
    system: bool = False  # systemd system units / a LaunchDaemon (root) instead of the user's
    paths: list[str] = field(default_factory=list)  # empty: the folder recorded on the server
    excludes: list[str] = field(default_factory=list)
    exclude_files: list[str] = field(default_factory=list)
    server: str | None = None
    user: str | None = None
    fingerprint: str | None = None
    ca_file: str | None = None
    repo: str | None = None
    password_file: str | None = None
    password_file_generated: bool = False  # enable wrote it, so disable removes it
    keyring: bool = False  # the password is in the OS keyring (see secret.py)
    tries: int = DEFAULT_TRIES
    retry_delay: float = DEFAULT_RETRY_DELAY
    run_on_battery: bool = False
    command: list[str] = field(default_factory=list)  # what the timer/agent/task runs
    files: list[str] = field(default_factory=list)  # what enable wrote besides this file
    enabled_at: str = ""

    def account(self) -> str:
        if self.repo:
            return f"repository {self.repo}"
        return f"{self.user} at {self.server}"

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "schedule"}
        out["schedule"] = self.schedule.to_json()
        out["version"] = 1
        return out

    @staticmethod
    def from_json(raw: Any) -> ScheduleSettings:
        if not isinstance(raw, dict) or raw.get("version") != 1:
            raise ValueError("not a version 1 schedule")
        kwargs: dict[str, Any] = {}
        for name, f in ScheduleSettings.__dataclass_fields__.items():
            if name == "schedule" or name not in raw:
                continue
            value = raw[name]
            kind = str(f.type)
            ok = (
                (kind.startswith("list") and isinstance(value, list))
                or (kind == "bool" and isinstance(value, bool))
                or (kind == "int" and isinstance(value, int) and not isinstance(value, bool))
                or (kind == "float" and isinstance(value, int | float))
                or ("str" in kind and (isinstance(value, str) or value is None))
            )
            if not ok:
                raise ValueError(f"bad {name}")
            kwargs[name] = [str(x) for x in value] if isinstance(value, list) else value
        return ScheduleSettings(schedule=Schedule.from_json(raw.get("schedule")), **kwargs)


def settings_path(folder: Path | None = None) -> Path:
    return (folder or config_dir()) / SETTINGS_NAME


def status_path(folder: Path | None = None) -> Path:
    return (folder or config_dir()) / STATUS_NAME


def load_settings(folder: Path | None = None) -> ScheduleSettings | None:
    path = settings_path(folder)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ScheduleSettings.from_json(raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StrongroomError(
            f"cannot read {path}: {exc}; run 'strongroom schedule disable' and enable again"
        ) from None


def save_settings(settings: ScheduleSettings, folder: Path | None = None) -> Path:
    path = settings_path(folder)
    data = json.dumps(settings.to_json(), indent=2, sort_keys=True) + "\n"
    write_private(path, data.encode("utf-8"))
    return path


@dataclass
class RunStatus:
    """The last scheduled run: when, how it ended, and a summary or one-line error."""

    time: str  # ISO 8601, local time with offset
    exit_code: int
    result: str  # "ok", "partial" (some files unreadable) or "failed"
    summary: str = ""
    error: str = ""
    tries: int = 1
    reported: bool = False  # the failure reached the server (REPORT_FAILURE)
    snapshot: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    @staticmethod
    def from_json(raw: Any) -> RunStatus:
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        time, code, result = raw.get("time"), raw.get("exit_code"), raw.get("result")
        if not isinstance(time, str) or not isinstance(code, int) or not isinstance(result, str):
            raise ValueError("missing time, exit_code or result")
        snap, stats = raw.get("snapshot"), raw.get("stats")
        return RunStatus(
            time=time,
            exit_code=code,
            result=result,
            summary=str(raw.get("summary") or ""),
            error=str(raw.get("error") or ""),
            tries=int(raw.get("tries") or 1),
            reported=bool(raw.get("reported")),
            snapshot=snap if isinstance(snap, str) else None,
            stats=stats if isinstance(stats, dict) else {},
        )


def load_status(folder: Path | None = None) -> RunStatus | None:
    try:
        return RunStatus.from_json(json.loads(status_path(folder).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a damaged status file only loses the last result's display


def save_status(status: RunStatus, folder: Path | None = None) -> Path:
    path = status_path(folder)
    write_private(path, (json.dumps(status.to_json(), indent=2) + "\n").encode("utf-8"))
    return path
