"""A full disk gives a one-line error, leaves no partial pack and a consistent repository."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cli


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root on Linux)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_a_clear_error_and_leaves_the_repository_consistent(
    small_disk: Path, tmp_path: Path
) -> None:
    cli = Cli(tmp_path)
    cli.repo = small_disk / "repo"
    cli.env["STRONGROOM_REPO"] = str(cli.repo)
    cli.init()
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_bytes(b"fits")
    assert cli.backup(src)["added"] == 1
    (src / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))

    res = cli.run("backup", str(src), "--json", check=False)
    assert res.returncode == 1
    assert "No space left on device" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    leftovers = [p for p in (cli.repo / "packs").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    cli.run("check", "--read-data")
    assert len(cli.run("snapshots", "--json").json()) == 1

    (src / "big.bin").unlink()  # space freed: the next backup completes
    assert cli.backup(src)["unchanged"] == 1
