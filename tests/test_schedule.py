"""Scheduled backups (issue 10): the generated units, plists and tasks, and real scheduled runs.

The real systemd is never touched: STRONGROOM_SCHEDULE_UNIT_DIR puts the units in a temporary
folder (and stops `schedule` from calling systemctl), or STRONGROOM_SCHEDULE_NO_ACTIVATE=1
with a temporary XDG_CONFIG_HOME does. A scheduled run is started exactly as systemd would:
the service's ExecStart line, split by systemd's rules, in a near-empty environment.
"""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest

from conftest import PASSWORD, Cli, Result
from netfixtures import KDF_ENV, NetCli, Server
from strongroom.client.schedule import launchd, power, systemd, windows
from strongroom.client.schedule.spec import Schedule, format_span, iso_duration, parse_duration
from strongroom.errors import UsageError

ANALYZE = shutil.which("systemd-analyze")
FAKE_FINGERPRINT = "SHA256:" + "ab" * 32


# ---- helpers ------------------------------------------------------------------------------------


def exec_start(service: str) -> list[str]:
    """The ExecStart= words as systemd splits them: double quotes with C escapes, %% and $$."""
    (line,) = [ln for ln in service.splitlines() if ln.startswith("ExecStart=")]
    text = line.removeprefix("ExecStart=")
    words: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == " ":
            i += 1
            continue
        word = []
        if text[i] == '"':
            i += 1
            while text[i] != '"':
                if text[i] == "\\":
                    i += 1
                word.append(text[i])
                i += 1
            i += 1
        else:
            while i < len(text) and text[i] != " ":
                word.append(text[i])
                i += 1
        words.append("".join(word).replace("%%", "%").replace("$$", "$"))
    return words


def verify_units(folder: Path, *, user: bool) -> None:
    """`systemd-analyze verify` on the units, which must also print no warning."""
    assert ANALYZE is not None
    runtime = folder.parent / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    proc = subprocess.run(
        [
            ANALYZE,
            *(["--user"] if user else []),
            "verify",
            str(folder / "strongroom-backup.timer"),
            str(folder / "strongroom-backup.service"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "strongroom-backup" not in proc.stderr, proc.stderr  # no warning about our units


def one_line_error(res: Result, code: int) -> str:
    assert res.returncode == code, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in res.stderr
    assert lines and lines[-1].startswith("strongroom: error: "), res.stderr
    return lines[-1]


def scheduled_env(tmp: Path) -> dict[str, str]:
    """What a systemd user manager gives a service: no STRONGROOM_* settings, no password."""
    home = tmp / "service-home"
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **KDF_ENV}
    if "PYTHONPYCACHEPREFIX" in os.environ:
        env["PYTHONPYCACHEPREFIX"] = os.environ["PYTHONPYCACHEPREFIX"]
    return env


def run_scheduled(
    command: list[str], tmp: Path, *extra: str, env: dict[str, str] | None = None
) -> Result:
    proc = subprocess.run(
        [*command, *extra],
        env={**scheduled_env(tmp), **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


class Scheduling:
    """A client whose `schedule` writes its units into a temporary folder."""

    def __init__(self, client: NetCli, tmp: Path) -> None:
        self.client = client
        self.config = tmp / "client config"  # a space: ExecStart must quote it
        self.units = tmp / "units"
        self.env = {
            "STRONGROOM_CONFIG_DIR": str(self.config),
            "STRONGROOM_SCHEDULE_UNIT_DIR": str(self.units),
        }

    def run(self, *args: str, check: bool = True, password: bool = False) -> Result:
        env = dict(self.env)
        res = self.client.run(
            "schedule",
            *args,
            check=False,
            env=env if password else {**env, "STRONGROOM_PASSWORD": ""},
        )
        if check and res.returncode != 0:
            raise AssertionError(f"schedule {args} exited {res.returncode}: {res.stderr}")
        return res

    def command(self) -> list[str]:
        return exec_start((self.units / "strongroom-backup.service").read_text())

    def status(self) -> dict[str, object]:
        out = self.run("status", "--json").stdout
        result: dict[str, object] = json.loads(out)
        return result


def password_file(tmp: Path, mode: int = 0o600) -> Path:
    pw = tmp / "backup-password"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(mode)
    return pw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


# ---- schedules ----------------------------------------------------------------------------------


def test_durations_and_calendar_mapping() -> None:
    assert parse_duration("1h30m", "x") == 5400
    assert parse_duration("90s", "x") == 90
    assert parse_duration("0.05", "x", allow_fraction=True) == 0.05
    assert parse_duration("2d", "x") == 172800
    for bad in ("", "1x", "h", "1h 2", "-5m"):
        with pytest.raises(UsageError):
            parse_duration(bad, "--every")
    assert format_span(5400) == "1h 30min"
    assert format_span(0.1) == "0.1s"
    assert iso_duration(3600) == "PT1H" and iso_duration(90000) == "P1DT1H"
    assert iso_duration(600) == "PT10M"

    def cal(every: str) -> str | None:
        return Schedule.from_options(every, None, None, None).on_calendar()

    assert cal("1h") == "*-*-* *:00:00"
    assert cal("15m") == "*-*-* *:00/15:00"
    assert cal("6h") == "*-*-* 00/6:00:00"
    assert cal("1d") == "*-*-* 00:00:00"
    assert cal("1w") == "Mon *-*-* 00:00:00"
    assert cal("90m") is None and cal("5h") is None  # monotonic timers
    daily = Schedule.from_options(None, "2:30", None, None)
    assert daily.daily == "02:30" and daily.on_calendar() == "*-*-* 02:30:00"
    assert Schedule.from_options(None, None, None, None).daily == "02:30"  # the default
    now = datetime(2026, 5, 4, 10, 7, 12)
    assert daily.next_run(now) == datetime(2026, 5, 5, 2, 30)
    assert Schedule.from_options("15m", None, None, None).next_run(now) == datetime(
        2026, 5, 4, 10, 15
    )
    assert Schedule.from_options("6h", None, None, None).next_run(now) == datetime(
        2026, 5, 4, 12, 0
    )
    mono = Schedule.from_options("90m", None, None, None)
    assert mono.next_run(now) is None
    assert mono.next_run(now, datetime(2026, 5, 4, 9, 0)) == datetime(2026, 5, 4, 10, 30)
    assert Schedule.from_json(daily.to_json()) == daily


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--every", "1x"), "use a duration like"),
        (("--every", "1m"), "between 5m and 31d"),
        (("--every", "330s"), "whole minutes"),
        (("--daily", "25:00"), "a time of day like 02:30"),
        (("--daily", "noon"), "a time of day like 02:30"),
        (
            ("--calendar", "nonsense"),
            "Failed to parse calendar" if ANALYZE else "not a systemd calendar spec",
        ),
        # A line break would inject settings into the unit file.
        (("--calendar", "daily\nExecStart=/bin/sh"), "not a systemd calendar spec"),
        (("--calendar", "%h"), "not a systemd calendar spec"),
        (("--every", "1h", "--daily", "02:00"), "only one of"),
        (("--random-delay", "7h"), "between 0 and 6h"),
        (("--retry-delay", "soon"), "--retry-delay 'soon'"),
        (("--tries", "0"), "Invalid value for '--tries'"),
    ],
)
def test_bad_schedule_is_one_line_usage_error(
    args: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    res = Cli(tmp_path).run(
        "schedule",
        "enable",
        *args,
        "--server",
        "127.0.0.1:1",
        "--user",
        "ann",
        "--fingerprint",
        FAKE_FINGERPRINT,
        "--no-verify",
        check=False,
        env={
            "STRONGROOM_REPO": "",
            "STRONGROOM_CONFIG_DIR": str(tmp_path / "cfg"),
            "STRONGROOM_SCHEDULE_UNIT_DIR": str(tmp_path / "units"),
        },
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    if says.startswith("Invalid value"):  # click's own usage message
        assert says in res.stderr
    else:
        line = one_line_error(res, 2)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert says in line, line
    assert not (tmp_path / "units").exists() and not (tmp_path / "cfg" / "schedule.json").exists()


def test_exec_start_quoting() -> None:
    assert systemd.quote("/usr/bin/strongroom") == "/usr/bin/strongroom"
    assert systemd.quote("/home/a b/c") == '"/home/a b/c"'
    assert systemd.quote("50%$HOME") == '"50%%$$HOME"'
    assert systemd.quote('a"b\\c') == '"a\\"b\\\\c"'
    cmd = ["/opt/sr/bin/strongroom", "schedule", "run", "--config-dir", '/h/x y/%n $U "q" \\z']
    assert exec_start("ExecStart=" + systemd.exec_line(cmd)) == cmd
    for bad in ("a\nb", "a\rb", ""):
        with pytest.raises(UsageError):
            systemd.quote(bad)
    with pytest.raises(UsageError):
        systemd.exec_line(["strongroom", "schedule", "run"])  # not an absolute path


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
@pytest.mark.parametrize(
    "options",
    [
        (None, None, None),
        ("1h", None, None),
        ("15m", None, None),
        ("90m", None, None),  # monotonic: OnActiveSec/OnUnitActiveSec
        (None, "23:05", None),
        (None, None, "Mon..Fri *-*-* 12:30:00"),
        (None, None, "weekly"),
    ],
)
def test_generated_units_pass_systemd_analyze_verify(
    tmp_path: Path, system: bool, options: tuple[str | None, str | None, str | None]
) -> None:
    spec = Schedule.from_options(*options, None)
    folder = tmp_path / "units"
    folder.mkdir()
    command = [
        sys.executable,
        "-m",
        "strongroom.cli.main",
        "schedule",
        "run",
        "--config-dir",
        str(tmp_path / "a config" / "50% $HOME"),
    ]
    (folder / "strongroom-backup.service").write_text(systemd.service_unit(command, system=system))
    timer = systemd.timer_unit(spec)
    (folder / "strongroom-backup.timer").write_text(timer)
    verify_units(folder, user=not system)
    assert exec_start((folder / "strongroom-backup.service").read_text()) == command
    assert "RandomizedDelaySec=" in timer
    if spec.on_calendar() is not None:
        assert f"OnCalendar={spec.on_calendar()}\n" in timer and "Persistent=true\n" in timer
    else:
        assert "OnUnitActiveSec=1h 30min\n" in timer


# ---- real scheduled runs ------------------------------------------------------------------------


def test_scheduled_run_backs_up_with_the_stored_password(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("hello\n")
    (data / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    sched = Scheduling(alice, tmp_path)

    # Others could read the password file: refused, and nothing written.
    loose = password_file(tmp_path, 0o640)
    line = one_line_error(
        sched.run("enable", "--password-file", str(loose), str(data), check=False), 2
    )
    assert "can be read by others" in line and PASSWORD not in line
    assert not sched.units.exists()

    pw = password_file(tmp_path)
    res = sched.run("enable", "--daily", "03:15", "--password-file", str(pw), str(data))
    assert "scheduled backups enabled: daily at 03:15" in res.stdout
    assert "where systemd does not look" in res.stderr  # and how to use them anyway
    verify_units(sched.units, user=False)  # the tests run as root: system units
    for f in [*sched.units.iterdir(), *sched.config.iterdir()]:
        assert PASSWORD not in f.read_text(errors="replace"), f
    settings = json.loads((sched.config / "schedule.json").read_text())
    assert settings["password_file"] == str(pw) and settings["paths"] == [str(data)]
    assert stat.S_IMODE((sched.config / "schedule.json").stat().st_mode) == 0o600

    command = sched.command()
    assert command[-3:] == ["run", "--config-dir", str(sched.config.absolute())]
    res = run_scheduled(command, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "scheduled backup done: snapshot" in res.stdout

    (snap,) = alice.run("snapshots", "--json").json()
    assert snap["paths"] == [str(data)]
    status = sched.status()
    assert status["enabled"] is True
    assert status["paths"] == [str(data)]
    assert status["next_run"] and str(status["next_run"]).endswith("03:15:00")
    last = status["last_run"]
    assert isinstance(last, dict)
    assert last["result"] == "ok" and last["exit_code"] == 0
    assert last["snapshot"] == snap["id"]
    assert "2 added" in last["summary"]
    text = sched.run("status").stdout
    assert "last run:" in text and ": ok (exit code 0)" in text and snap["id"][:8] in text
    (user,) = json.loads(server.admin("user", "list", "--json").stdout)
    assert user["last_backup_result"] == "ok"

    # Later the password file becomes readable by others: the run refuses it, says so, and
    # records it.
    pw.chmod(0o644)
    res = run_scheduled(command, tmp_path)
    assert "can be read by others" in one_line_error(res, 1)
    last = sched.status()["last_run"]
    assert isinstance(last, dict) and last["result"] == "failed"
    assert "can be read by others" in last["error"]


def test_unreachable_server_retries_then_fails(alice: NetCli, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sched = Scheduling(alice, tmp_path)
    port = free_port()
    pw = password_file(tmp_path)
    sched.run(
        "enable",
        "--every",
        "1h",
        "--server",
        f"127.0.0.1:{port}",
        "--fingerprint",
        FAKE_FINGERPRINT,
        "--password-file",
        str(pw),
        "--no-verify",
        "--retry-delay",
        "0.1",
        str(data),
    )
    started = time.monotonic()
    res = run_scheduled(sched.command(), tmp_path)
    elapsed = time.monotonic() - started
    line = one_line_error(res, 1)
    assert f"cannot reach server 127.0.0.1:{port}" in line and "gave up after 3 tries" in line
    assert res.stderr.count("trying again in") == 2  # 0.1s, then 0.2s
    assert elapsed >= 0.3
    last = sched.status()["last_run"]
    assert isinstance(last, dict)
    assert last["result"] == "failed" and last["tries"] == 3 and last["reported"] is False
    assert last["exit_code"] == 1


def test_a_refused_backup_is_reported_to_the_server(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    data = tmp_path / "Secret Project"
    data.mkdir()
    sched = Scheduling(alice, tmp_path)
    sched.run("enable", "--every", "6h", "--password-file", str(password_file(tmp_path)), str(data))
    data.rmdir()
    res = run_scheduled(sched.command(), tmp_path)
    assert "no such file or folder" in one_line_error(res, 1)
    assert "trying again" not in res.stderr  # it would fail again: no retry
    last = sched.status()["last_run"]
    assert isinstance(last, dict)
    assert last["result"] == "failed" and last["reported"] is True and last["tries"] == 1
    (user,) = json.loads(server.admin("user", "list", "--json").stdout)
    assert user["last_backup_result"] == "failed"
    db = sqlite3.connect(server.data_dir / "users.sqlite")
    try:
        messages = [row[0] for row in db.execute("SELECT message FROM events")]
    finally:
        db.close()
    # The server learns what happened, never the folder's name.
    assert messages and all("Secret" not in m and str(tmp_path) not in m for m in messages)
    assert any("missing" in m for m in messages)
    assert "reported to the server" in sched.run("status").stdout


def test_on_battery_retries_and_reports(server: Server, alice: NetCli, tmp_path: Path) -> None:
    supplies = tmp_path / "power_supply"
    for name, kind, extra in (("AC", "Mains", {"online": "0"}), ("BAT0", "Battery", {})):
        (supplies / name).mkdir(parents=True)
        (supplies / name / "type").write_text(kind + "\n")
        for key, value in {"status": "Discharging", "scope": "System", **extra}.items():
            (supplies / name / key).write_text(value + "\n")
    assert power.linux_on_battery(supplies) is True
    data = tmp_path / "data"
    data.mkdir()
    sched = Scheduling(alice, tmp_path)
    sched.run(
        "enable",
        "--password-file",
        str(password_file(tmp_path)),
        "--tries",
        "2",
        "--retry-delay",
        "0.05",
        str(data),
    )
    env = {"STRONGROOM_POWER_SUPPLY_DIR": str(supplies)}
    res = run_scheduled(sched.command(), tmp_path, env=env)
    assert "on battery power (gave up after 2 tries)" in one_line_error(res, 1)
    (user,) = json.loads(server.admin("user", "list", "--json").stdout)
    assert user["last_backup_result"] == "failed"
    assert alice.run("snapshots", "--json").json() == []

    # Mains power back: the same command backs up.
    (supplies / "AC" / "online").write_text("1\n")
    assert power.linux_on_battery(supplies) is False
    res = run_scheduled(sched.command(), tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert len(alice.run("snapshots", "--json").json()) == 1


def test_power_supply_reading(tmp_path: Path) -> None:
    assert power.linux_on_battery(tmp_path / "absent") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert power.linux_on_battery(empty) is None  # a desktop or VM: unknown, so it runs
    mouse = tmp_path / "mouse" / "hid-battery"
    mouse.mkdir(parents=True)
    for key, value in (("type", "Battery"), ("status", "Discharging"), ("scope", "Device")):
        (mouse / key).write_text(value)
    assert power.linux_on_battery(tmp_path / "mouse") is False


def test_disable_removes_what_enable_wrote(tmp_path: Path) -> None:
    client = Cli(tmp_path)
    home, xdg, cfg = tmp_path / "home", tmp_path / "xdg", tmp_path / "xdg" / "strongroom"
    home.mkdir()
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(xdg),
        "STRONGROOM_CONFIG_DIR": str(cfg),
        "STRONGROOM_SCHEDULE_NO_ACTIVATE": "1",
        "STRONGROOM_REPO": "",
    }
    res = client.run(
        "schedule",
        "enable",
        "--scope",
        "user",
        "--every",
        "30m",
        "--server",
        "backup.example.org:44000",
        "--user",
        "ann",
        "--fingerprint",
        FAKE_FINGERPRINT,
        "--no-verify",
        env=env,
    )
    units = xdg / "systemd" / "user"
    assert sorted(p.name for p in units.iterdir()) == [
        "strongroom-backup.service",
        "strongroom-backup.timer",
    ]
    assert "systemctl --user daemon-reload && systemctl --user enable --now" in res.stderr
    # No --password-file: the password (from STRONGROOM_PASSWORD here) went to a 0600 file.
    pw = cfg / "schedule-password"
    assert pw.read_text() == PASSWORD + "\n"
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    assert PASSWORD not in (cfg / "schedule.json").read_text()
    if ANALYZE is not None:
        verify_units(units, user=True)
    status = json.loads(client.run("schedule", "status", "--json", env=env).stdout)
    assert status["enabled"] is True and status["password"] == "file"
    assert status["next_run_source"] == "computed"

    res = client.run("schedule", "disable", env=env)
    assert "scheduled backups disabled" in res.stdout
    assert list(units.iterdir()) == [] and list(cfg.iterdir()) == []
    assert (
        json.loads(client.run("schedule", "status", "--json", env=env).stdout)["enabled"] is False
    )
    assert "not enabled" in client.run("schedule", "disable", env=env).stdout


# ---- launchd and Task Scheduler -----------------------------------------------------------------


def test_launchd_plist_round_trip() -> None:
    command = [
        "/Users/ann/.venv/bin/strongroom",
        "schedule",
        "run",
        "--config-dir",
        "/Users/ann/Library/Application Support/strongroom",
    ]
    daily = plistlib.loads(
        launchd.plist_bytes(command, Schedule(daily="02:30"), "/Users/ann/Library/Logs/s.log")
    )
    assert daily["Label"] == launchd.LABEL
    assert daily["ProgramArguments"] == command
    assert daily["StartCalendarInterval"] == {"Hour": 2, "Minute": 30}
    assert "StartInterval" not in daily and daily["RunAtLoad"] is False
    assert daily["StandardErrorPath"] == "/Users/ann/Library/Logs/s.log"
    every = plistlib.loads(launchd.plist_bytes(command, Schedule(every=3600), "/tmp/l"))
    assert every["StartInterval"] == 3600 and "StartCalendarInterval" not in every
    with pytest.raises(UsageError, match="use --every or --daily on macOS"):
        launchd.plist_bytes(command, Schedule(calendar="hourly"), "/tmp/l")
    backend = launchd.LaunchdBackend(system=False, home=Path("/Users/ann"))
    if "STRONGROOM_SCHEDULE_UNIT_DIR" not in os.environ:
        assert backend.path == Path("/Users/ann/Library/LaunchAgents/org.strongroom.backup.plist")


def test_windows_task_xml_with_windows_paths() -> None:
    command = [
        r"C:\Program Files\Python312\pythonw.exe",
        "-m",
        "strongroom.cli.main",
        "schedule",
        "run",
        "--config-dir",
        r"C:\Users\Ann Lee\AppData\Local\strongroom",
    ]
    now = datetime(2026, 3, 1, 15, 4)
    ns = {"t": windows.NS}
    for spec, trigger in (
        (Schedule(daily="02:30"), "CalendarTrigger"),
        (Schedule(every=3600, random_delay=360), "TimeTrigger"),
    ):
        data = windows.task_file_bytes(windows.task_xml(command, spec, now))
        assert data[:2] == b"\xff\xfe"  # UTF-16 with its BOM, as schtasks /XML wants
        root = ET.fromstring(data)
        assert root.tag == f"{{{windows.NS}}}Task"
        exe = root.find("t:Actions/t:Exec", ns)
        assert exe is not None
        assert exe.findtext("t:Command", namespaces=ns) == command[0]
        assert exe.findtext("t:Arguments", namespaces=ns) == (
            "-m strongroom.cli.main schedule run --config-dir "
            r'"C:\Users\Ann Lee\AppData\Local\strongroom"'
        )
        trig = root.find(f"t:Triggers/t:{trigger}", ns)
        assert trig is not None
        assert root.findtext("t:Settings/t:StartWhenAvailable", namespaces=ns) == "true"
        if trigger == "CalendarTrigger":
            assert trig.findtext("t:StartBoundary", namespaces=ns) == "2026-03-01T02:30:00"
            assert trig.findtext("t:ScheduleByDay/t:DaysInterval", namespaces=ns) == "1"
            assert trig.findtext("t:RandomDelay", namespaces=ns) == "PT10M"
        else:
            assert trig.findtext("t:Repetition/t:Interval", namespaces=ns) == "PT1H"
            assert trig.findtext("t:RandomDelay", namespaces=ns) == "PT6M"
    assert windows.create_command(
        r"C:\Users\Ann Lee\AppData\Local\strongroom\strongroom-backup.xml"
    ) == [
        "schtasks",
        "/Create",
        "/TN",
        "strongroom-backup",
        "/XML",
        r"C:\Users\Ann Lee\AppData\Local\strongroom\strongroom-backup.xml",
        "/F",
    ]
    with pytest.raises(UsageError, match="use --every or --daily on Windows"):
        windows.task_xml(command, Schedule(calendar="hourly"), now)


# ---- the OS keyring (optional) ------------------------------------------------------------------


def _has_keyring() -> bool:
    try:
        import keyring  # noqa: F401
    except ImportError:
        return False
    return True


def test_keyring_holds_the_password(server: Server, alice: NetCli, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    sched = Scheduling(alice, tmp_path)
    if not _has_keyring():
        res = sched.run("enable", "--keyring", str(data), check=False, password=True)
        assert "pip install 'strongroom[keyring]'" in one_line_error(res, 2)
        assert not sched.units.exists()
        return
    store = tmp_path / "keyring.json"
    keyring_env = {
        "PYTHON_KEYRING_BACKEND": "keyring_backend_for_tests.FileKeyring",
        "PYTHONPATH": str(Path(__file__).parent),
        "STRONGROOM_TEST_KEYRING_FILE": str(store),
    }
    sched.env.update(keyring_env)
    res = sched.run("enable", "--keyring", str(data), password=True)
    assert "password: in the OS keyring" in res.stdout
    entries = json.loads(store.read_text())
    assert entries == {f"strongroom\n{server.address}|alice": PASSWORD}
    assert not (sched.config / "schedule-password").exists()
    for f in [*sched.units.iterdir(), *sched.config.iterdir()]:
        assert PASSWORD not in f.read_text(errors="replace"), f

    res = run_scheduled(sched.command(), tmp_path, env=keyring_env)
    assert res.returncode == 0, res.stderr
    assert len(alice.run("snapshots", "--json").json()) == 1
    assert sched.status()["password"] == "keyring"

    sched.run("disable")
    assert json.loads(store.read_text()) == {}
    assert list(sched.units.iterdir()) == []


def test_enable_on_a_terminal_asks_trust_and_password(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    """No password file given: asked (hidden) and kept in a 0600 file in the config folder; an
    unknown server's fingerprint is asked about and pinned in client.json, not in the units."""
    from conftest import strongroom_exe
    from terminal import Terminal

    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    sched = Scheduling(alice, tmp_path)
    env = {**alice.env, **sched.env}
    for name in ("STRONGROOM_PASSWORD", "STRONGROOM_FINGERPRINT"):
        env.pop(name)
    term = Terminal([*strongroom_exe(), "schedule", "enable", "--every", "2h", str(data)], env)
    term.answer("Password for alice at", PASSWORD)
    term.answer("Trust this server?", "y")
    assert term.finish(60) == 0, term.seen
    assert PASSWORD not in term.seen
    assert "scheduled backups enabled: every 2h" in term.seen
    pw = sched.config / "schedule-password"
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600 and pw.read_text() == PASSWORD + "\n"
    cfg = json.loads((sched.config / "client.json").read_text())
    assert cfg["fingerprints"] == {server.address: server.fingerprint}
    assert json.loads((sched.config / "schedule.json").read_text())["fingerprint"] is None

    res = run_scheduled(sched.command(), tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(alice.run("snapshots", "--json").json()) == 1


def test_enable_checks_the_password_now(alice: NetCli, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sched = Scheduling(alice, tmp_path)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    res = sched.run("enable", "--password-file", str(wrong), str(data), check=False)
    assert "wrong user name or password" in one_line_error(res, 1)
    assert not sched.units.exists() and not (sched.config / "schedule.json").exists()
    # No folder given, and none recorded for alice on the server: said now, not at 2:30.
    res = sched.run("enable", "--password-file", str(password_file(tmp_path)), check=False)
    assert "no folder is recorded for you on the server" in one_line_error(res, 2)
