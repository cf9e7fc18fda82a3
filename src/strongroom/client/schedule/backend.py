"""What each platform's scheduler (systemd, launchd, Task Scheduler) does for `schedule`.

Tests and packagers steer it with two environment variables:
- STRONGROOM_SCHEDULE_UNIT_DIR: write the unit/plist/task files into this folder instead of the
  platform's own, and never call systemctl/launchctl/schtasks (that folder is not where the
  scheduler looks; the note says what to run);
- STRONGROOM_SCHEDULE_NO_ACTIVATE=1: write the files in the usual place but do not call the
  scheduler (same note).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .settings import ScheduleSettings

TOOL_TIMEOUT = 30


@dataclass
class LiveState:
    """What the platform's scheduler says now (None where it cannot be asked)."""

    active: bool | None = None
    next_run: str | None = None
    last_trigger: str | None = None
    detail: str = ""


class Backend(Protocol):
    name: str

    def describe(self) -> str: ...

    def paths(self) -> list[Path]: ...

    def generate(self, settings: ScheduleSettings) -> dict[Path, bytes]: ...

    def activate(self) -> list[str]: ...

    def deactivate(self) -> list[str]: ...

    def reload(self) -> None: ...

    def state(self) -> LiveState: ...


def unit_dir_override() -> Path | None:
    env = os.environ.get("STRONGROOM_SCHEDULE_UNIT_DIR")
    return Path(env) if env else None


def may_activate() -> str | None:
    """None if the scheduler may be called, else why not."""
    if unit_dir_override() is not None:
        return "STRONGROOM_SCHEDULE_UNIT_DIR is set"
    if os.environ.get("STRONGROOM_SCHEDULE_NO_ACTIVATE"):
        return "STRONGROOM_SCHEDULE_NO_ACTIVATE is set"
    return None


def run_tool(args: list[str]) -> tuple[int, str, str]:
    """Run a scheduler tool by name; (127, '', why) if it cannot run at all."""
    exe = shutil.which(args[0])
    if exe is None:
        return 127, "", f"{args[0]} not found"
    try:
        proc = subprocess.run(
            [exe, *args[1:]],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", f"{args[0]}: {exc}"
    return proc.returncode, proc.stdout, proc.stderr


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
