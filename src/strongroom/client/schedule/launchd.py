"""macOS: a launchd agent (~/Library/LaunchAgents), or a daemon (/Library/LaunchDaemons) as root.

launchd has no random delay and no systemd calendar syntax: `--every` becomes StartInterval,
`--daily` StartCalendarInterval (a run missed while asleep starts at wake-up).
"""

from __future__ import annotations

import os
import plistlib
from pathlib import Path
from typing import Any

from ...errors import UsageError
from .backend import LiveState, last_line, may_activate, run_tool, unit_dir_override
from .settings import ScheduleSettings
from .spec import Schedule

LABEL = "org.strongroom.backup"


def plist_dict(command: list[str], schedule: Schedule, log_file: str) -> dict[str, Any]:
    when: dict[str, Any]
    if schedule.every is not None:
        when = {"StartInterval": schedule.every}
    elif schedule.daily_time is not None:
        hour, minute = schedule.daily_time
        when = {"StartCalendarInterval": {"Hour": hour, "Minute": minute}}
    else:
        raise UsageError(
            "--calendar takes systemd's calendar syntax, which launchd does not understand: "
            "use --every or --daily on macOS"
        )
    return {
        "Label": LABEL,
        "ProgramArguments": list(command),
        **when,
        "RunAtLoad": False,
        "ProcessType": "Background",
        "LowPriorityIO": True,
        "Nice": 10,
        "StandardOutPath": log_file,
        "StandardErrorPath": log_file,
    }


def plist_bytes(command: list[str], schedule: Schedule, log_file: str) -> bytes:
    return plistlib.dumps(plist_dict(command, schedule, log_file), sort_keys=False)


class LaunchdBackend:
    name = "launchd"

    def __init__(self, system: bool, home: Path | None = None) -> None:
        self.system = system
        home = home or Path.home()
        override = unit_dir_override()
        if override is not None:
            self.folder = override
        elif system:
            self.folder = Path("/Library/LaunchDaemons")
        else:
            self.folder = home / "Library" / "LaunchAgents"
        logs = Path("/Library/Logs") if system else home / "Library" / "Logs"
        self.log_file = str(logs / "strongroom-schedule.log")
        self.path = self.folder / f"{LABEL}.plist"

    def describe(self) -> str:
        return f"launchd {'daemon' if self.system else 'agent'} {LABEL} ({self.path})"

    def paths(self) -> list[Path]:
        return [self.path]

    def generate(self, settings: ScheduleSettings) -> dict[Path, bytes]:
        return {self.path: plist_bytes(settings.command, settings.schedule, self.log_file)}

    def _domain(self) -> str:
        return "system" if self.system else f"gui/{os.getuid()}"

    def activate(self) -> list[str]:
        why = may_activate()
        if why is None:
            run_tool(["launchctl", "bootout", self._domain(), str(self.path)])  # a previous one
            code, _, err = run_tool(["launchctl", "bootstrap", self._domain(), str(self.path)])
            if code == 0:
                return []
            why = f"launchctl failed: {last_line(err) or code}"
        return [
            f"the agent is written but not loaded ({why}); to load it, run: "
            f"launchctl bootstrap {self._domain()} {self.path}"
        ]

    def deactivate(self) -> list[str]:
        why = may_activate()
        if why is None:
            run_tool(["launchctl", "bootout", self._domain(), str(self.path)])
            return []
        return [
            f"if the agent was loaded, unload it too ({why}): "
            f"launchctl bootout {self._domain()} {self.path}"
        ]

    def reload(self) -> None:
        pass

    def state(self) -> LiveState:
        if may_activate() is not None:
            return LiveState()
        code, _, _ = run_tool(["launchctl", "print", f"{self._domain()}/{LABEL}"])
        return LiveState(active=code == 0, detail="loaded" if code == 0 else "not loaded")
