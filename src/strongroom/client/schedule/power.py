"""Is this machine running on battery? True, False, or None where it cannot tell.

Linux reads /sys/class/power_supply (STRONGROOM_POWER_SUPPLY_DIR points elsewhere, for tests);
macOS asks `pmset -g batt`; Windows calls GetSystemPowerStatus. Anything unknown is None, and
a scheduled backup then simply runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def on_battery() -> bool | None:
    if sys.platform == "win32":
        return _windows()
    if sys.platform == "darwin":
        return _macos()
    root = Path(os.environ.get("STRONGROOM_POWER_SUPPLY_DIR") or "/sys/class/power_supply")
    return linux_on_battery(root)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def linux_on_battery(root: Path) -> bool | None:
    """On battery when no mains/USB supply is online and a (system) battery is discharging."""
    try:
        supplies = sorted(root.iterdir())
    except OSError:
        return None
    external_online = False
    discharging = False
    for sup in supplies:
        kind = _read(sup / "type")
        if kind in ("Mains", "USB", "USB_C", "USB_PD"):
            external_online |= _read(sup / "online") == "1"
        elif kind == "Battery" and _read(sup / "scope") != "Device":  # not a mouse's battery
            discharging |= _read(sup / "status") == "Discharging"
    if external_online:
        return False
    return True if discharging else (False if supplies else None)


def _macos() -> bool | None:
    pmset = shutil.which("pmset")
    if pmset is None:
        return None
    try:
        out = subprocess.run(
            [pmset, "-g", "batt"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    if "Battery Power" in out:
        return True
    return False if "AC Power" in out else None


def _windows() -> bool | None:
    if sys.platform != "win32":
        return None
    import ctypes
    from ctypes import wintypes

    class SystemPowerStatus(ctypes.Structure):
        _fields_ = [
            ("ACLineStatus", wintypes.BYTE),
            ("BatteryFlag", wintypes.BYTE),
            ("BatteryLifePercent", wintypes.BYTE),
            ("SystemStatusFlag", wintypes.BYTE),
            ("BatteryLifeTime", wintypes.DWORD),
            ("BatteryFullLifeTime", wintypes.DWORD),
        ]

    status = SystemPowerStatus()
    if not ctypes.windll.kernel32.GetSystemPowerStatus(ctypes.byref(status)):
        return None
    line = status.ACLineStatus & 0xFF
    return {0: True, 1: False}.get(line)  # 255: unknown
