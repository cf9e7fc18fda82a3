"""Restoring into a target that already holds (part of) the same snapshot completes cleanly."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import Cli, tree_state


def test_restore_twice_into_the_same_target(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_bytes(b"alpha")
    (src / "big.bin").write_bytes(os.urandom(300_000))
    os.symlink("d/a.txt", src / "link")
    os.link(src / "d" / "a.txt", src / "hard")
    os.mkfifo(src / "pipe")
    cli.backup(src)
    target = tmp_path / "target"
    cli.restore(target)
    # Simulate a half-finished earlier run: a stale link and a stale copy where links belong.
    os.unlink(target / "src" / "link")
    os.symlink("elsewhere", target / "src" / "link")
    os.unlink(target / "src" / "hard")
    (target / "src" / "hard").write_bytes(b"stale")
    res = cli.restore(target)
    assert res.returncode == 0, res.stderr
    assert tree_state(target / "src") == tree_state(src)
    restored = target / "src"
    assert os.stat(restored / "hard").st_ino == os.stat(restored / "d" / "a.txt").st_ino
