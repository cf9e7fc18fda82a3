"""Which scheduler this machine has, and the command it is to run."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .backend import Backend
from .launchd import LaunchdBackend
from .systemd import SystemdBackend
from .windows import WindowsBackend


def current_platform() -> str:
    if sys.platform == "win32":
        return "windows"
    if sys.platform == "darwin":
        return "launchd"
    return "systemd"


def is_admin() -> bool:
    """Root on POSIX (system units / a LaunchDaemon); Windows tasks are always the user's."""
    geteuid = getattr(os, "geteuid", None)
    return bool(geteuid is not None and geteuid() == 0)


def backend_for(platform: str, system: bool, config_folder: Path) -> Backend:
    if platform == "windows":
        return WindowsBackend(config_folder)
    if platform == "launchd":
        return LaunchdBackend(system)
    return SystemdBackend(system)


def self_command(config_folder: Path, platform: str) -> list[str]:
    """This installation's `strongroom schedule run`, by absolute paths (a timer has no PATH
    of the user's shell, and may run after the user's venv changed its own PATH)."""
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    base: list[str]
    exe = shutil.which("strongroom", path=bindir)
    if platform == "windows":
        # pythonw: no console window pops up when the task runs.
        pythonw = shutil.which("pythonw", path=bindir)
        base = (
            [pythonw, "-m", "strongroom.cli.main"]
            if pythonw
            else [sys.executable, "-m", "strongroom.cli.main"]
        )
    elif exe:
        base = [os.path.abspath(exe)]
    else:
        base = [os.path.abspath(sys.executable), "-m", "strongroom.cli.main"]
    return [*base, "schedule", "run", "--config-dir", str(config_folder.absolute())]
