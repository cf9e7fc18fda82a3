"""Linux: a systemd timer and a oneshot service (user units, or system units as root).

The service runs `strongroom schedule run --config-dir DIR`, which reads schedule.json and the
password file or keyring itself: unit files are world-readable, so they hold no secret.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...errors import UsageError
from .backend import LiveState, last_line, may_activate, run_tool, unit_dir_override
from .settings import ScheduleSettings
from .spec import Schedule, format_span

UNIT = "strongroom-backup"
_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def quote(arg: str) -> str:
    """One ExecStart= word: '%' and '$' escaped (specifiers, variables), quoted if needed."""
    if not arg or not arg.isprintable():
        raise UsageError(f"{arg!r}: a scheduled command cannot hold this (control character)")
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(command: list[str]) -> str:
    if not command or not os.path.isabs(command[0]):
        raise UsageError("the scheduled command must start with an absolute path")
    return " ".join(quote(a) for a in command)


def service_unit(command: list[str], *, system: bool) -> str:
    # A user manager has no network-online.target; system units wait for the network.
    network = "Wants=network-online.target\nAfter=network-online.target\n" if system else ""
    return (
        "# Written by 'strongroom schedule enable'; 'strongroom schedule disable' removes it.\n"
        "# No password here: the command reads it from the password file or OS keyring named\n"
        "# in schedule.json in the folder given by --config-dir.\n"
        "[Unit]\n"
        "Description=strongroom scheduled backup\n"
        f"{network}"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={exec_line(command)}\n"
        "Nice=10\n"
        "IOSchedulingClass=idle\n"
    )


def timer_unit(schedule: Schedule) -> str:
    calendar = schedule.on_calendar()
    if calendar is not None:
        # Persistent: a run missed while the machine was off starts soon after boot.
        when = f"OnCalendar={calendar}\nPersistent=true\n"
    else:
        # An interval that fits no calendar: soon after each start (which makes up for runs
        # missed while off, as Persistent= does for calendars), then every interval.
        assert schedule.every is not None
        first = format_span(min(schedule.every, 300))
        when = f"OnActiveSec={first}\nOnUnitActiveSec={format_span(schedule.every)}\n"
    delay = (
        f"RandomizedDelaySec={format_span(schedule.random_delay)}\n"
        if schedule.random_delay
        else ""
    )
    return (
        "# Written by 'strongroom schedule enable'; 'strongroom schedule disable' removes it.\n"
        "[Unit]\n"
        f"Description=strongroom scheduled backup, {schedule.describe()}\n"
        "\n"
        "[Timer]\n"
        f"{when}"
        f"{delay}"
        f"Unit={UNIT}.service\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )


def default_unit_dir(system: bool) -> Path:
    override = unit_dir_override()
    if override is not None:
        return override
    if system:
        return Path("/etc/systemd/system")
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "systemd" / "user"


class SystemdBackend:
    name = "systemd"

    def __init__(self, system: bool, unit_dir: Path | None = None) -> None:
        self.system = system
        self.unit_dir = unit_dir or default_unit_dir(system)
        self._ctl = ["systemctl"] if system else ["systemctl", "--user"]

    def describe(self) -> str:
        kind = "system" if self.system else "user"
        return f"systemd {kind} timer {UNIT}.timer ({self.unit_dir})"

    def paths(self) -> list[Path]:
        return [self.unit_dir / f"{UNIT}.service", self.unit_dir / f"{UNIT}.timer"]

    def generate(self, settings: ScheduleSettings) -> dict[Path, bytes]:
        service, timer = self.paths()
        return {
            service: service_unit(settings.command, system=self.system).encode("utf-8"),
            timer: timer_unit(settings.schedule).encode("utf-8"),
        }

    def _usable(self) -> str | None:
        """None if systemctl can manage these units here, else why not."""
        why = may_activate()
        if why is not None:
            return why
        if self.system and not Path("/run/systemd/system").is_dir():
            return "systemd is not running on this machine"
        code, _, err = run_tool([*self._ctl, "show-environment"])
        if code != 0:
            return f"{' '.join(self._ctl)} is not usable here ({last_line(err) or code})"
        return None

    def activate(self) -> list[str]:
        ctl = " ".join(self._ctl)
        start = f"{ctl} enable --now {UNIT}.timer"
        if unit_dir_override() is not None:
            # Not a folder systemd searches: `systemctl link` would make it one.
            files = " ".join(
                quote(str(self.unit_dir / f"{UNIT}.{k}")) for k in ("service", "timer")
            )
            return [
                f"the units are in {self.unit_dir}, where systemd does not look for them "
                f"(STRONGROOM_SCHEDULE_UNIT_DIR is set); to use them, run: "
                f"{ctl} link {files} && {start}"
            ]
        why = self._usable()
        if why is None:
            code, _, err = run_tool([*self._ctl, "daemon-reload"])
            if code == 0:
                code, _, err = run_tool([*self._ctl, "enable", "--now", f"{UNIT}.timer"])
            if code == 0:
                return []
            why = f"systemctl failed: {last_line(err)}"
        notes = [
            f"the timer is written but not started ({why}); to start it, run: "
            f"{ctl} daemon-reload && {start}"
        ]
        if not self.system:
            notes.append("to run it while you are logged out too: loginctl enable-linger $USER")
        return notes

    def deactivate(self) -> list[str]:
        why = self._usable()
        if why is None:
            code, _, err = run_tool([*self._ctl, "disable", "--now", f"{UNIT}.timer"])
            if code != 0 and "not loaded" not in err and "does not exist" not in err:
                return [f"systemctl could not stop the timer: {last_line(err)}"]
            return []
        if unit_dir_override() is not None:
            return []
        ctl = " ".join(self._ctl)
        return [f"if the timer was started, stop it too ({why}): {ctl} disable --now {UNIT}.timer"]

    def reload(self) -> None:
        """After the unit files are gone: let systemd forget them."""
        if self._usable() is None:
            run_tool([*self._ctl, "daemon-reload"])

    def state(self) -> LiveState:
        if self._usable() is not None:
            return LiveState()
        code, out, _ = run_tool(
            [
                *self._ctl,
                "show",
                f"{UNIT}.timer",
                "-p",
                "ActiveState",
                "-p",
                "NextElapseUSecRealtime",
                "-p",
                "LastTriggerUSec",
            ]
        )
        if code != 0:
            return LiveState()
        props = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
        active = props.get("ActiveState", "")
        return LiveState(
            active=active == "active",
            next_run=_prop(props, "NextElapseUSecRealtime"),
            last_trigger=_prop(props, "LastTriggerUSec"),
            detail=f"timer {active}" if active else "",
        )


def _prop(props: dict[str, str], name: str) -> str | None:
    value = props.get(name, "").strip()
    return None if value in ("", "n/a", "0") else value
