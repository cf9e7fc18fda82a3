"""Recovery keys in and out: shown once on the terminal, or written to a file (0600, never over
an existing one) or a printable HTML page; read back from such a file or a hidden prompt."""

from __future__ import annotations

import contextlib
import errno
import getpass
import html
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import StrongroomError, UsageError
from ..recovery import RecoveryKey

_WARNING = (
    "Whoever has this key and a copy of the key file (the server holds it; a local repository "
    "keeps it in its folder) can read every backup it protects. Keep it offline: printed, or on "
    "a USB stick in a drawer; never on the computer it protects."
)


def _lines(key: RecoveryKey, per_line: int = 5) -> list[str]:
    groups = key.text().split("-")
    return ["-".join(groups[i : i + per_line]) for i in range(0, len(groups), per_line)]


@dataclass
class RecoveryOutput:
    """Where a new recovery key goes: a file, a printable page, else the terminal (stderr, so
    a --json output stays clean). `enabled=False`: make none (--no-recovery-key)."""

    file: str | None = None
    page: str | None = None
    enabled: bool = True
    label: str = "this account"  # "alice at host:44000", "repository /path"
    delivered: bool = False

    def check(self) -> None:
        """Before anything changes: the files must be new, in folders that exist."""
        for path in (self.file, self.page):
            if path is None:
                continue
            if os.path.lexists(path):
                raise UsageError(
                    f"{path} already exists: a recovery key file is never overwritten; choose "
                    "another name (or move the old one away)"
                )
            folder = Path(path).parent
            if not folder.is_dir():
                raise UsageError(f"folder {folder} does not exist (for {path})")

    def deliver(self, key: RecoveryKey) -> None:
        self.delivered = True
        try:
            if self.file:
                _write_new(self.file, self.file_text(key))
                click.echo(f"recovery key written to {self.file} (readable by you only)", err=True)
            if self.page:
                _write_new(self.page, self.page_html(key))
                click.echo(f"printable recovery key page written to {self.page}", err=True)
        except OSError as exc:
            # The account already holds the new wrapping: the key must not be lost here.
            show(key, self.label)
            raise StrongroomError(
                f"could not write {exc.filename}: {exc.strerror}; the recovery key is shown "
                "above instead"
            ) from None
        if not (self.file or self.page):
            show(key, self.label)

    def file_text(self, key: RecoveryKey) -> str:
        made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        head = [
            "strongroom recovery key",
            f"for: {self.label}",
            f"made: {made}",
            *_wrap(_WARNING),
            "To use it: strongroom recover --recovery-key-file THIS-FILE",
        ]
        return "".join(f"# {line}\n" for line in head) + "\n".join(_lines(key)) + "\n"

    def page_html(self, key: RecoveryKey) -> str:
        made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        rows = "\n".join(f"<div>{html.escape(line)}</div>" for line in _lines(key))
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>strongroom recovery key</title>
<style>
body {{ font-family: sans-serif; max-width: 42em; margin: 2em auto; }}
.key {{ font-family: monospace; font-size: 1.5em; letter-spacing: .08em; border: 2px solid #000;
        padding: 1em; margin: 1.5em 0; line-height: 1.6; }}
</style></head>
<body>
<h1>strongroom recovery key</h1>
<p>For: <strong>{html.escape(self.label)}</strong><br>Made: {made}</p>
<div class="key">
{rows}
</div>
<p>If you forget your password: ask your admin to reset it, then run
<code>strongroom recover</code> and type this key (dashes and case do not matter).</p>
<p><strong>{html.escape(_WARNING)}</strong></p>
<p>Print this page, store it safely, then delete the file.</p>
</body></html>
"""


def show(key: RecoveryKey, label: str) -> None:
    out = [
        "",
        f"Your recovery key for {label} (shown once, stored nowhere else):",
        "",
        *(f"    {line}" for line in _lines(key)),
        "",
        "With it you can open your backups if you forget your password ('strongroom recover').",
        *_wrap(_WARNING),
        "",
    ]
    click.echo("\n".join(out), err=True)


def _wrap(text: str, width: int = 90) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _write_new(path: str, text: str) -> None:
    """Write `path`, readable by the owner only, durably, and never over an existing file:
    a temporary file is fsync'd and then linked to its name (which fails if it exists)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise UsageError(
                f"{path} already exists: a recovery key file is never overwritten"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                raise
            if os.path.lexists(target):  # no hard links here (FAT): check, then rename
                raise UsageError(f"{path} already exists") from None
            os.rename(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if hasattr(os, "O_DIRECTORY"):
        dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_recovery_key(path: str | None) -> RecoveryKey:
    """From a file written by `deliver` (lines starting with # are ignored), or typed."""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UsageError(f"cannot read recovery key file {path}: {exc.strerror}") from None
        body = " ".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        return RecoveryKey.from_text(body)
    if not sys.stdin.isatty():
        raise UsageError("give your recovery key with --recovery-key-file (or run on a terminal)")
    try:
        typed = getpass.getpass("Recovery key (not shown; dashes and case do not matter): ")
    except (EOFError, KeyboardInterrupt):
        raise StrongroomError("no recovery key entered") from None
    return RecoveryKey.from_text(typed)


def output_options(func: click.decorators.FC) -> click.decorators.FC:
    """--recovery-key-file / --recovery-key-html for commands that make a recovery key."""
    func = click.option(
        "--recovery-key-html",
        type=click.Path(dir_okay=False),
        help="Also write a printable page with the new recovery key (a new file).",
    )(func)
    return click.option(
        "--recovery-key-file",
        type=click.Path(dir_okay=False),
        help="Write the new recovery key to this new file (0600) instead of the terminal.",
    )(func)
