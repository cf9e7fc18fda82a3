"""`strongroom schedule enable|status|disable`: backups that happen on their own.

`enable` writes a systemd timer (Linux), a launchd agent (macOS) or a Task Scheduler task
(Windows) that runs the hidden `strongroom schedule run`; the settings are in schedule.json
and the last run's result in schedule-status.json, both in the client's config folder.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..client.config import ClientConfig, config_dir
from ..client.schedule import secret
from ..client.schedule.platforms import backend_for, current_platform, is_admin, self_command
from ..client.schedule.runner import keyring_account, run_schedule
from ..client.schedule.settings import (
    DEFAULT_RETRY_DELAY,
    DEFAULT_TRIES,
    PASSWORD_NAME,
    RunStatus,
    ScheduleSettings,
    load_settings,
    load_status,
    save_settings,
    save_status,
    settings_path,
    status_path,
)
from ..client.schedule.spec import Schedule, format_span, parse_duration, systemd_next_elapse
from ..errors import StrongroomError, UsageError
from .app import cli, handle_errors
from .errors import display
from .secrets_input import read_password
from .target import Where, repo_options, trust_prompt

MAX_RETRY_DELAY = 86400.0


@cli.group()
def schedule() -> None:
    """Back up on a schedule: a systemd timer, launchd agent or Windows task."""


def _retry_delay(text: str | None, default: float) -> float:
    if text is None:
        return default
    value = parse_duration(text, "--retry-delay", allow_fraction=True)
    if not 0 <= value <= MAX_RETRY_DELAY:
        raise UsageError("--retry-delay: between 0 and 1d")
    return value


def _location(where: Where, settings: ScheduleSettings) -> None:
    """Fill in the repository or server account, from the options, environment or client.json."""
    from ..client.transport import format_address, parse_address

    if where.repo and where.server:
        raise UsageError("give either --repo (a local folder) or --server, not both")
    if where.repo:
        repo = os.path.abspath(where.repo)
        if not os.path.isfile(os.path.join(repo, "index.sqlite")):
            raise StrongroomError(f"no strongroom repository at {where.repo}")
        settings.repo = repo
        return
    cfg = ClientConfig.load()
    server = where.server or cfg.server
    user = where.user or (cfg.user if server == cfg.server else None)
    if not server or not user:
        raise UsageError(
            "no server account: log in once with 'strongroom login', or give --server HOST:PORT "
            "and --user NAME (or --repo DIR for a local repository)"
        )
    key = format_address(*parse_address(server))
    settings.server, settings.user = key, user
    # Only a fingerprint given now is kept with the schedule; a pinned one stays in client.json,
    # where re-pinning a renewed certificate ('strongroom login --fingerprint') reaches it too.
    settings.fingerprint = where.fingerprint
    settings.ca_file = os.path.abspath(where.ca_file) if where.ca_file else None


def _verify(settings: ScheduleSettings, password: bytes) -> None:
    """Log in once now, so a wrong password or an untrusted server shows up today, not at the
    first scheduled run."""
    if settings.repo:
        from ..repository import LocalRepository

        LocalRepository.open(Path(settings.repo), password, writer=False).close()
        return
    from ..client.schedule.account import open_account

    assert settings.server and settings.user
    trust = trust_prompt if sys.stdin.isatty() else None
    repo = open_account(
        settings.server,
        settings.user,
        password,
        fingerprint=settings.fingerprint,
        ca_file=settings.ca_file,
        trust=trust,
    )
    try:
        if not settings.paths and not repo.directory:
            raise UsageError(
                "no folder is recorded for you on the server: give the folders to back up "
                "(e.g. strongroom schedule enable ~/Documents)"
            )
        if settings.ca_file is None and settings.fingerprint is None:
            _remember_fingerprint(settings.server, repo.transport.fingerprint)
    finally:
        repo.close()


def _remember_fingerprint(server: str, fingerprint: str) -> None:
    """A server trusted just now (on a terminal) is pinned in client.json, as `login` does."""
    cfg = ClientConfig.load()
    if server not in cfg.fingerprints:
        cfg.fingerprints[server] = fingerprint
        cfg.save()


def _fingerprint_known(settings: ScheduleSettings) -> bool:
    if settings.repo or settings.fingerprint or settings.ca_file:
        return True
    return bool(settings.server and settings.server in ClientConfig.load().fingerprints)


def _password(
    settings: ScheduleSettings,
    password_file: str | None,
    use_keyring: bool,
    no_verify: bool,
    folder: Path,
) -> bytes:
    """The password for unattended runs, and where they will find it (set in `settings`)."""
    if use_keyring and password_file:
        raise UsageError("give either --password-file or --keyring, not both")
    if password_file:
        settings.password_file = os.path.abspath(password_file)
        return secret.read_password_file(Path(settings.password_file))
    settings.keyring = use_keyring
    if not use_keyring:
        settings.password_file = str(folder / PASSWORD_NAME)
        settings.password_file_generated = True
    # Asked twice only when no login will catch a typo.
    prompt = f"Password for {settings.account()}"
    return read_password(None, confirm=no_verify, prompt=prompt)


def _clean_previous(old: ScheduleSettings, new: ScheduleSettings | None, folder: Path) -> list[str]:
    """Undo what an earlier `enable` did that the new schedule does not redo."""
    backend = backend_for(old.platform, old.system, folder)
    notes = backend.deactivate()
    keep = set(new.files) if new else set()
    if new and new.password_file:
        keep.add(new.password_file)
    for name in old.files:
        if name not in keep:
            Path(name).unlink(missing_ok=True)
    if old.password_file_generated and old.password_file and old.password_file not in keep:
        Path(old.password_file).unlink(missing_ok=True)
    if old.keyring and not (new and new.keyring and keyring_account(new) == keyring_account(old)):
        secret.keyring_delete(keyring_account(old))
    backend.reload()
    return notes


@schedule.command()
@repo_options
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--every", metavar="DURATION", help="Run every DURATION (e.g. 1h, 30m, 1d).")
@click.option("--daily", metavar="HH:MM", help="Run daily at HH:MM (the default: 02:30).")
@click.option("--calendar", metavar="SPEC", help="A systemd OnCalendar spec (Linux only).")
@click.option(
    "--random-delay",
    metavar="DURATION",
    help="Start up to DURATION late, at random (spreads many clients; default 10m or less).",
)
@click.option(
    "--keyring",
    "use_keyring",
    is_flag=True,
    help="Keep the password in the OS keyring (pip install 'strongroom[keyring]') instead of a "
    "0600 file in the config folder.",
)
@click.option("--exclude", "-e", "excludes", multiple=True, help="Exclude a pattern.")
@click.option("--exclude-file", "exclude_files", multiple=True, type=click.Path(dir_okay=False))
@click.option(
    "--tries",
    type=click.IntRange(1, 20),
    default=DEFAULT_TRIES,
    show_default=True,
    help="Tries on battery power or with the server unreachable.",
)
@click.option(
    "--retry-delay",
    metavar="DURATION",
    default=None,
    help="Wait before the second try, doubled for each further one (default 5m).",
)
@click.option("--run-on-battery", is_flag=True, help="Do not wait for mains power.")
@click.option(
    "--scope",
    type=click.Choice(["user", "system"]),
    default=None,
    help="systemd user units or system units (default: system as root, else user).",
)
@click.option(
    "--no-verify", is_flag=True, help="Do not log in now to check the password and server."
)
@handle_errors
def enable(
    where: Where,
    paths: tuple[str, ...],
    every: str | None,
    daily: str | None,
    calendar: str | None,
    random_delay: str | None,
    use_keyring: bool,
    excludes: tuple[str, ...],
    exclude_files: tuple[str, ...],
    tries: int,
    retry_delay: str | None,
    run_on_battery: bool,
    scope: str | None,
    no_verify: bool,
) -> None:
    """Back up PATHS (default: your folder recorded on the server) on a schedule."""
    folder = config_dir().absolute()
    platform = current_platform()
    system = (scope == "system") if scope else (platform != "windows" and is_admin())
    if system and platform == "windows":
        raise UsageError("--scope system is for systemd and launchd only")
    settings = ScheduleSettings(
        schedule=Schedule.from_options(every, daily, calendar, random_delay),
        platform=platform,
        system=system,
        tries=tries,
        retry_delay=_retry_delay(retry_delay, DEFAULT_RETRY_DELAY),
        run_on_battery=run_on_battery,
        excludes=list(excludes),
        enabled_at=datetime.now().astimezone().isoformat(timespec="seconds"),
    )
    _location(where, settings)
    for raw in paths:
        if not os.path.lexists(raw):
            raise StrongroomError(f"{raw}: no such file or folder")
    settings.paths = [os.path.abspath(p) for p in paths]
    for f in exclude_files:
        if not os.path.isfile(f):
            raise UsageError(f"exclude file {f}: no such file")
    settings.exclude_files = [os.path.abspath(f) for f in exclude_files]
    password = _password(settings, where.password_file, use_keyring, no_verify, folder)
    if no_verify and not _fingerprint_known(settings):
        raise UsageError(
            "this server's certificate is not pinned yet: log in once with 'strongroom login', "
            "give --fingerprint, or leave out --no-verify"
        )
    settings.command = self_command(folder, platform)
    backend = backend_for(platform, system, folder)
    contents = backend.generate(settings)  # refuses what this platform cannot express
    settings.files = [str(p) for p in contents]
    if not no_verify:
        _verify(settings, password)

    old = load_settings(folder)
    notes = _clean_previous(old, settings, folder) if old is not None else []
    if settings.keyring:
        secret.keyring_store(keyring_account(settings), password)
    elif settings.password_file_generated:
        secret.write_password_file(Path(settings.password_file or ""), password)
    for path, data in contents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)  # world-readable, as unit files are: nothing secret in them
        os.replace(tmp, path)
    save_settings(settings, folder)
    notes += backend.activate()

    click.echo(
        f"{'replaced the schedule; ' if old else ''}scheduled backups enabled: "
        f"{settings.schedule.describe()}"
    )
    _echo_what(settings)
    click.echo(f"scheduler: {backend.describe()}")
    for note in notes:
        click.echo(f"note: {display(note)}", err=True)


def _echo_what(settings: ScheduleSettings) -> None:
    what = (
        ", ".join(display(p) for p in settings.paths) or "the folder recorded for you on the server"
    )
    click.echo(f"backs up: {what}")
    click.echo(f"into: {display(settings.account())}")
    if settings.keyring:
        click.echo("password: in the OS keyring")
    else:
        click.echo(f"password: read from {display(settings.password_file or '')} (mode 0600)")


def _next_run(settings: ScheduleSettings, last: RunStatus | None) -> tuple[str | None, str]:
    """Computed where the scheduler cannot be asked: (time, how it was found)."""
    spec = settings.schedule
    if spec.calendar is not None:
        return systemd_next_elapse(spec.calendar), "systemd-analyze"
    last_time = None
    if last is not None:
        try:
            last_time = datetime.fromisoformat(last.time).astimezone().replace(tzinfo=None)
        except ValueError:
            last_time = None
    when = spec.next_run(datetime.now(), last_time)
    return (when.isoformat(sep=" ") if when else None), "computed"


@schedule.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def status(as_json: bool) -> None:
    """Show the schedule, the next run and the last run's result."""
    folder = config_dir().absolute()
    settings = load_settings(folder)
    last = load_status(folder)
    out: dict[str, Any] = {"enabled": False, "last_run": last.to_json() if last else None}
    if settings is not None:
        backend = backend_for(settings.platform, settings.system, folder)
        live = backend.state() if settings.platform == current_platform() else None
        missing = [f for f in settings.files if not os.path.exists(f)]
        next_run, source = (
            (live.next_run, settings.platform) if live and live.next_run else (None, "")
        )
        if next_run is None:
            next_run, source = _next_run(settings, last)
        out.update(
            enabled=not missing and (live is None or live.active is not False),
            scheduler=backend.describe(),
            scheduler_state=(live.detail if live else "")
            or ("files written" if not missing else ""),
            missing_files=missing,
            schedule=settings.schedule.describe(),
            spec=settings.schedule.to_json(),
            paths=settings.paths,
            account=settings.account(),
            password="keyring" if settings.keyring else "file",
            password_file=None if settings.keyring else settings.password_file,
            tries=settings.tries,
            retry_delay=settings.retry_delay,
            next_run=next_run,
            next_run_source=source if next_run else None,
            files=settings.files,
        )
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    if settings is None:
        click.echo("scheduled backups: not enabled (see 'strongroom schedule enable --help')")
    else:
        state = "enabled" if out["enabled"] else "NOT active"
        detail = f" ({out['scheduler_state']})" if out["scheduler_state"] else ""
        click.echo(f"scheduled backups: {state}{detail}: {settings.schedule.describe()}")
        click.echo(f"scheduler: {out['scheduler']}")
        for f in out["missing_files"]:
            click.echo(f"missing: {display(f)} (run 'strongroom schedule enable' again)")
        _echo_what(settings)
        retry = f"{settings.tries} tries, first retry after {format_span(settings.retry_delay)}"
        click.echo(f"on battery or unreachable: {retry}")
        shown = out["next_run"] or "unknown"
        click.echo(
            f"next run: {shown}" + (f" ({out['next_run_source']})" if out["next_run"] else "")
        )
    if last is None:
        click.echo("last run: none yet")
    else:
        what = last.summary if last.result != "failed" else last.error
        extra = f", {last.tries} tries" if last.tries > 1 else ""
        told = "; reported to the server" if last.reported else ""
        click.echo(
            f"last run: {last.time}: {last.result} (exit code {last.exit_code}{extra}): "
            f"{display(what)}{told}"
        )


@schedule.command()
@handle_errors
def disable() -> None:
    """Stop scheduled backups and remove what `enable` wrote."""
    folder = config_dir().absolute()
    try:
        settings = load_settings(folder)
    except StrongroomError:
        _disable_damaged(folder)
        return
    if settings is None:
        click.echo("scheduled backups are not enabled")
        return
    notes = _clean_previous(settings, None, folder)
    for path in (settings_path(folder), status_path(folder)):
        path.unlink(missing_ok=True)
    click.echo("scheduled backups disabled; removed: " + ", ".join(settings.files))
    for note in notes:
        click.echo(f"note: {display(note)}", err=True)


def _disable_damaged(folder: Path) -> None:
    """schedule.json cannot be read: remove what enable writes in its usual places."""
    platform = current_platform()
    backend = backend_for(platform, platform != "windows" and is_admin(), folder)
    notes = backend.deactivate()
    removed = [str(p) for p in backend.paths() if p.exists()]
    for path in [
        *backend.paths(),
        folder / PASSWORD_NAME,
        settings_path(folder),
        status_path(folder),
    ]:
        path.unlink(missing_ok=True)
    backend.reload()
    click.echo(
        f"removed a damaged {settings_path(folder)}"
        + (f" and {', '.join(removed)}" if removed else "")
    )
    click.echo(
        "note: an OS keyring entry named 'strongroom', if enable made one, is left: "
        "remove it with your keyring tool",
        err=True,
    )
    for note in notes:
        click.echo(f"note: {display(note)}", err=True)


@schedule.command(hidden=True)
@click.option(
    "--config-dir",
    "folder",
    type=click.Path(file_okay=False),
    help="The config folder that holds schedule.json (the timer passes its own).",
)
@click.option("--tries", type=click.IntRange(1, 50), default=None, help="Override the tries.")
@click.option("--retry-delay", metavar="DURATION", default=None, help="Override the delay.")
@handle_errors
def run(folder: str | None, tries: int | None, retry_delay: str | None) -> None:
    """What the timer runs: the scheduled backup, with retries and a status file."""
    if folder:
        os.environ["STRONGROOM_CONFIG_DIR"] = os.path.abspath(folder)
    where = config_dir().absolute()
    settings = load_settings(where)
    if settings is None:
        raise StrongroomError(
            f"no schedule in {where} (enable one with 'strongroom schedule enable')"
        )
    result = run_schedule(
        settings,
        where,
        tries=tries or settings.tries,
        retry_delay=_retry_delay(retry_delay, settings.retry_delay),
        echo=lambda m: click.echo(f"strongroom schedule: {display(m)}", err=True),
    )
    save_status(result, where)
    if result.result == "failed":
        error = StrongroomError(result.error)
        error.exit_code = result.exit_code or 1
        raise error
    click.echo(f"scheduled backup done: {result.summary}")
    if result.exit_code:
        sys.exit(result.exit_code)
