"""A file whose mtime falls inside the backup's own time window is re-read next time."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import Cli


def test_file_modified_during_backup_is_reread_next_time(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "old.txt").write_bytes(b"settled long ago")
    past = time.time_ns() - 3600 * 10**9
    os.utime(src / "old.txt", ns=(past, past))
    racy = src / "racy.txt"
    racy.write_bytes(b"v1")
    # An mtime after the backup starts is what a write racing with the backup produces.
    future = time.time_ns() + 600 * 10**9
    os.utime(racy, ns=(future, future))

    first = cli.backup(src)
    assert first["added"] == 2

    second = cli.backup(src)
    # The racy file is read again (its stat cannot be trusted) but is not reported as changed;
    # the settled file is not read.
    assert (second["added"], second["modified"], second["removed"]) == (0, 0, 0)
    assert second["unchanged"] == 2
    assert second["bytes_read"] == len(b"v1")

    # A same-size, same-mtime rewrite is therefore still caught.
    racy.write_bytes(b"v2")
    os.utime(racy, ns=(future, future))
    cli.backup(src)
    out = tmp_path / "out"
    cli.restore(out)
    assert (out / "src" / "racy.txt").read_bytes() == b"v2"
