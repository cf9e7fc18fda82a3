"""What the timer starts (`strongroom schedule run`): a backup with retries, a status file, and a
report to the server when the run finally fails.

A try that finds the machine on battery or the server (or a local repository's disk)
unreachable is retried after a delay that doubles each time; a backup that fails for any other
reason (a missing folder, a wrong password, a full quota) would fail again, so it is not.

The backup itself runs as a child `strongroom backup --json`, exactly as a person would run it;
the password reaches it through --password-file, or for the keyring through the child's
environment (readable only by this user), never its argv. The client's network and login code
is imported only when needed: `schedule status` stays quick.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ...errors import EXIT_ERROR, EXIT_PARTIAL, StrongroomError
from ..config import account_key
from . import power, secret
from .settings import RunStatus, ScheduleSettings
from .spec import format_span

PROBE_TIMEOUT = 10.0
_LOCATION_ENV = (
    "STRONGROOM_SERVER",
    "STRONGROOM_USER",
    "STRONGROOM_FINGERPRINT",
    "STRONGROOM_CA_FILE",
    "STRONGROOM_REPO",
    "STRONGROOM_PASSWORD",
)


class _Retry(Exception):
    """A try that may work later (battery, network)."""

    def __init__(self, message: str, report: str) -> None:
        super().__init__(message)
        self.report = report


class _Failed(Exception):
    """A run that failed for good. `report` is what the server may be told: never a local
    path or message (the server must not learn file or folder names), only what happened."""

    def __init__(self, message: str, report: str | None, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.report = report
        self.exit_code = exit_code


@dataclass
class _Done:
    exit_code: int
    stats: dict[str, Any]


def keyring_account(settings: ScheduleSettings) -> str:
    """The keyring entry's name: the account as client.json's pins name it."""
    from ..transport import format_address, parse_address

    if settings.repo:
        return f"repo:{os.path.abspath(settings.repo)}"
    assert settings.server and settings.user
    return account_key(format_address(*parse_address(settings.server)), settings.user)


def load_password(settings: ScheduleSettings) -> bytes:
    if settings.keyring:
        return secret.keyring_load(keyring_account(settings))
    if settings.password_file:
        return secret.read_password_file(Path(settings.password_file))
    raise StrongroomError("schedule.json names no password source; enable the schedule again")


def probe(settings: ScheduleSettings) -> str | None:
    """None if the repository can be reached now, else why not."""
    from ..transport import format_address, parse_address

    if settings.repo:
        if (Path(settings.repo) / "index.sqlite").is_file():
            return None
        return f"repository {settings.repo} is not available (a disk not mounted?)"
    assert settings.server
    host, port = parse_address(settings.server)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        return f"cannot reach server {format_address(host, port)}: {exc.strerror or exc}"
    return None


def backup_command(settings: ScheduleSettings) -> list[str]:
    cmd = [sys.executable, "-m", "strongroom.cli.main", "backup", "--json"]
    if settings.repo:
        cmd += ["--repo", settings.repo]
    else:
        assert settings.server and settings.user
        cmd += ["--server", settings.server, "--user", settings.user]
        if settings.fingerprint:
            cmd += ["--fingerprint", settings.fingerprint]
        if settings.ca_file:
            cmd += ["--ca-file", settings.ca_file]
    if settings.password_file and not settings.keyring:
        cmd += ["--password-file", settings.password_file]
    for pattern in settings.excludes:
        cmd += ["--exclude", pattern]
    for f in settings.exclude_files:
        cmd += ["--exclude-file", f]
    return [*cmd, "--", *settings.paths] if settings.paths else cmd


def _error_line(stderr: str, code: int) -> str:
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith(("note:", "warning:")):
            return line.removeprefix("strongroom: ").removeprefix("error: ")
    return f"the backup exited with code {code}"


def _attempt(settings: ScheduleSettings, password: bytes, folder: Path) -> _Done:
    if not settings.run_on_battery and power.on_battery():
        raise _Retry("on battery power", "the computer was on battery power")
    for path in settings.paths:
        if not os.path.lexists(path):
            raise _Failed(
                f"{path}: no such file or folder",
                "a folder to back up is missing on the client",
            )
    why = probe(settings)
    if why is not None:
        raise _Retry(why, "the repository could not be reached")
    env = {k: v for k, v in os.environ.items() if k not in _LOCATION_ENV}
    env["STRONGROOM_CONFIG_DIR"] = str(folder)
    if settings.keyring:
        env["STRONGROOM_PASSWORD"] = password.decode("utf-8")
    proc = subprocess.run(
        backup_command(settings),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.stderr:
        sys.stderr.write(proc.stderr)  # warnings and notes go to the journal / log as they are
    if proc.returncode in (0, EXIT_PARTIAL):
        try:
            stats = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            stats = {}
        return _Done(proc.returncode, stats if isinstance(stats, dict) else {})
    line = _error_line(proc.stderr, proc.returncode)
    if probe(settings) is not None:  # the connection went away during the backup
        raise _Retry(line, "the repository could not be reached")
    raise _Failed(line, f"the backup failed (exit code {proc.returncode})", proc.returncode)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def summary(stats: dict[str, Any]) -> str:
    def num(key: str) -> int:
        value = stats.get(key)
        return value if isinstance(value, int) else 0

    snap = str(stats.get("snapshot") or "")[:8]
    text = (
        f"snapshot {snap}: {num('added')} added, {num('modified')} modified, "
        f"{num('removed')} removed, {num('unchanged')} unchanged; "
        f"{_size(num('bytes_uploaded'))} uploaded"
    )
    warnings = stats.get("warnings")
    if isinstance(warnings, list) and warnings:
        text += f"; {len(warnings)} file(s) or folder(s) could not be read"
    return text


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def run_schedule(
    settings: ScheduleSettings,
    folder: Path,
    *,
    tries: int,
    retry_delay: float,
    echo: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> RunStatus:
    """Run the scheduled backup; the returned status is what the status file records."""
    password: bytes | None = None
    failure: _Failed | None = None
    attempt = 0
    for attempt in range(1, tries + 1):
        try:
            if password is None:
                try:
                    password = load_password(settings)
                except StrongroomError as exc:
                    raise _Failed(str(exc), None) from None
            done = _attempt(settings, password, folder)
        except _Retry as exc:
            if attempt == tries:
                failure = _Failed(
                    f"{exc} (gave up after {tries} tr{'ies' if tries > 1 else 'y'})",
                    f"scheduled backup gave up after {tries} tries: {exc.report}",
                )
                break
            wait = retry_delay * 2 ** (attempt - 1)
            echo(f"{exc}; trying again in {format_span(wait)} (try {attempt} of {tries})")
            sleep(wait)
            continue
        except _Failed as exc:
            failure = exc
            break
        return RunStatus(
            time=_now(),
            exit_code=done.exit_code,
            result="ok" if done.exit_code == 0 else "partial",
            summary=summary(done.stats),
            tries=attempt,
            snapshot=str(done.stats.get("snapshot") or "") or None,
            stats=done.stats,
        )
    assert failure is not None
    status = RunStatus(
        time=_now(),
        exit_code=failure.exit_code,
        result="failed",
        error=str(failure),
        tries=attempt,
    )
    if failure.report and password is not None:
        status.reported = report(settings, password, failure.report, echo)
    return status


def report(
    settings: ScheduleSettings, password: bytes, message: str, echo: Callable[[str], None]
) -> bool:
    """Tell the server the run failed, so the admin sees "failed", not just "stale"."""
    if settings.repo or not settings.server or not settings.user or probe(settings) is not None:
        return False
    from .account import open_account  # the login stack, only when there is something to say

    try:
        repo = open_account(
            settings.server,
            settings.user,
            password,
            fingerprint=settings.fingerprint,
            ca_file=settings.ca_file,
        )
        try:
            repo.report_failure(message)
        finally:
            repo.close()
    except StrongroomError as exc:
        echo(f"could not report the failure to the server: {exc}")
        return False
    return True
