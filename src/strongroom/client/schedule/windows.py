"""Windows: a Task Scheduler task, from an XML file registered with `schtasks /Create /XML`.

The task runs only while the user is logged on (their keyring and profile folder are then
available); StartWhenAvailable makes up for a run missed while the PC was off, as systemd's
Persistent= does. The battery check is the runner's, so Task Scheduler's own is off.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from ...errors import UsageError
from .backend import LiveState, last_line, may_activate, run_tool, unit_dir_override
from .settings import ScheduleSettings
from .spec import Schedule, iso_duration

TASK_NAME = "strongroom-backup"
NS = "http://schemas.microsoft.com/windows/2004/02/mit/task"


def _add(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def arguments(command: list[str]) -> str:
    """The Arguments element: Windows command-line quoting (what CommandLineToArgvW undoes)."""
    return subprocess.list2cmdline(command[1:])


def task_xml(command: list[str], schedule: Schedule, now: datetime) -> str:
    """The task definition; `now` fixes the start boundary (the day the schedule begins)."""
    task = ET.Element("Task", {"version": "1.2", "xmlns": NS})
    info = _add(task, "RegistrationInfo")
    _add(info, "Description", f"strongroom scheduled backup, {schedule.describe()}")
    _add(info, "URI", f"\\{TASK_NAME}")
    triggers = _add(task, "Triggers")
    day = now.strftime("%Y-%m-%d")
    if schedule.every is not None:
        trig = _add(triggers, "TimeTrigger")
        rep = _add(trig, "Repetition")
        _add(rep, "Interval", iso_duration(schedule.every))
        _add(rep, "StopAtDurationEnd", "false")
        _add(trig, "StartBoundary", f"{day}T00:00:00")
    elif schedule.daily is not None:
        trig = _add(triggers, "CalendarTrigger")
        _add(trig, "StartBoundary", f"{day}T{schedule.daily}:00")
    else:
        raise UsageError(
            "--calendar takes systemd's calendar syntax, which Task Scheduler does not "
            "understand: use --every or --daily on Windows"
        )
    _add(trig, "Enabled", "true")
    if schedule.random_delay:
        _add(trig, "RandomDelay", iso_duration(schedule.random_delay))
    if schedule.daily is not None:
        _add(_add(trig, "ScheduleByDay"), "DaysInterval", "1")
    principal = _add(_add(task, "Principals"), "Principal", None)
    principal.set("id", "Author")
    _add(principal, "LogonType", "InteractiveToken")
    _add(principal, "RunLevel", "LeastPrivilege")
    settings = _add(task, "Settings")
    for tag, value in (
        ("MultipleInstancesPolicy", "IgnoreNew"),
        ("DisallowStartIfOnBatteries", "false"),
        ("StopIfGoingOnBatteries", "false"),
        ("StartWhenAvailable", "true"),
        ("RunOnlyIfNetworkAvailable", "false"),
        ("AllowStartOnDemand", "true"),
        ("Enabled", "true"),
        ("ExecutionTimeLimit", "PT0S"),  # no limit: retries may wait ~15 minutes
        ("Priority", "7"),
    ):
        _add(settings, tag, value)
    actions = _add(task, "Actions")
    actions.set("Context", "Author")
    exe = _add(actions, "Exec")
    _add(exe, "Command", command[0])
    _add(exe, "Arguments", arguments(command))
    ET.indent(task)
    return '<?xml version="1.0" encoding="UTF-16"?>\n' + ET.tostring(task, encoding="unicode")


def task_file_bytes(xml: str) -> bytes:
    return xml.encode("utf-16")  # with a BOM, as schtasks expects for encoding="UTF-16"


def create_command(xml_path: str) -> list[str]:
    return ["schtasks", "/Create", "/TN", TASK_NAME, "/XML", xml_path, "/F"]


def delete_command() -> list[str]:
    return ["schtasks", "/Delete", "/TN", TASK_NAME, "/F"]


class WindowsBackend:
    name = "windows"

    def __init__(self, folder: Path, now: datetime | None = None) -> None:
        self.folder = unit_dir_override() or folder
        self.path = self.folder / f"{TASK_NAME}.xml"
        self.now = now or datetime.now()

    def describe(self) -> str:
        return f"Task Scheduler task {TASK_NAME} ({self.path})"

    def paths(self) -> list[Path]:
        return [self.path]

    def generate(self, settings: ScheduleSettings) -> dict[Path, bytes]:
        xml = task_xml(settings.command, settings.schedule, self.now)
        return {self.path: task_file_bytes(xml)}

    def activate(self) -> list[str]:
        why = may_activate()
        if why is None:
            code, _, err = run_tool(create_command(str(self.path)))
            if code == 0:
                return []
            why = f"schtasks failed: {last_line(err) or code}"
        return [
            f"the task is written but not registered ({why}); to register it, run: "
            + subprocess.list2cmdline(create_command(str(self.path)))
        ]

    def deactivate(self) -> list[str]:
        why = may_activate()
        if why is None:
            run_tool(delete_command())
            return []
        return [
            f"if the task was registered, delete it too ({why}): "
            + subprocess.list2cmdline(delete_command())
        ]

    def reload(self) -> None:
        pass

    def state(self) -> LiveState:
        if may_activate() is not None:
            return LiveState()
        code, out, _ = run_tool(["schtasks", "/Query", "/TN", TASK_NAME, "/FO", "LIST"])
        if code != 0:
            return LiveState(active=False, detail="not registered")
        props = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in out.splitlines())
        )
        nxt = props.get("Next Run Time")
        return LiveState(active=True, next_run=nxt if nxt and nxt != "N/A" else None)
