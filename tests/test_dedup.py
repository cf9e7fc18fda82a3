"""Deduplication and change detection, measured through the real `strongroom` program.

Sizes are checked twice: with the `bytes_uploaded` the backup reports and with the growth of
the repository's pack files on disk, so a backup that under-reports cannot pass.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from strongroom.chunker import MAX_SIZE

MiB = 1 << 20


def pack_bytes(cli: Cli) -> int:
    """What the repository really holds in pack files."""
    total = 0
    for dirpath, _dirs, files in os.walk(cli.repo / "packs"):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def backup(cli: Cli, *paths: Path, extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], int]:
    """Run a backup; return its JSON and how many bytes the packs on disk grew by."""
    before = pack_bytes(cli)
    result = cli.backup(*paths, extra=extra)
    grown = pack_bytes(cli) - before
    assert result["warnings"] == []
    assert result["bytes_uploaded"] == grown, "bytes_uploaded must match what was written"
    return result, grown


def counts(result: dict[str, Any]) -> tuple[int, int, int, int]:
    return result["added"], result["modified"], result["removed"], result["unchanged"]


def test_identical_files_stored_once(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "base").write_bytes(os.urandom(MiB))
    first, _ = backup(cli, src)
    assert first["added"] == 1

    big = os.urandom(20 * MiB)
    small = os.urandom(3000)
    for i in range(5):
        (src / f"copy{i}" / "deeper").mkdir(parents=True)
        (src / f"copy{i}" / "deeper" / "big.bin").write_bytes(big)
    (src / "smalls").mkdir()
    for i in range(50):
        (src / "smalls" / f"note{i:02d}.txt").write_bytes(small)
    second, grown = backup(cli, src)
    assert counts(second) == (55, 0, 0, 1)
    assert second["bytes_scanned"] == MiB + 5 * len(big) + 50 * len(small)
    # One copy of the big file, one of the small one, plus trees and per-blob overhead (Padmé
    # pads each chunk of 256 KiB to 4 MiB by less than 1/32 of its size: docs/FORMAT.md).
    assert len(big) <= grown < len(big) + len(big) // 32 + 256 * 1024, grown

    # Renamed and further copied: nothing new to store.
    os.rename(src / "copy0", src / "renamed")
    for i in range(50, 60):
        (src / "smalls" / f"note{i:02d}.txt").write_bytes(small)
    (src / "another_big.bin").write_bytes(big)
    third, grown = backup(cli, src)
    assert third["added"] == 1 + 1 + 10  # renamed/deeper/big.bin, another_big.bin, notes
    assert third["removed"] == 1  # copy0/deeper/big.bin
    assert grown < 64 * 1024, grown
    cli.run("check", "--read-data")


def test_one_byte_inserted_in_large_file_stores_few_chunks(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(100 * MiB)
    path = src / "large.bin"
    path.write_bytes(data)
    _, grown_first = backup(cli, src)
    assert grown_first >= len(data)

    middle = len(data) // 2
    path.write_bytes(data[:middle] + b"!" + data[middle:])
    second, grown = backup(cli, src)
    assert counts(second) == (0, 1, 0, 0)
    assert second["bytes_read"] == len(data) + 1
    # Content-defined chunking: only the chunk around the insertion changes (a chunk is at most
    # MAX_SIZE), however far the rest of the file shifted.
    assert grown <= 2 * MAX_SIZE, grown
    assert grown <= 8 * MiB


@pytest.mark.parametrize("mode", ["cache", "no-cache"])
def test_change_counts_are_exact(cli: Cli, tmp_path: Path, mode: str) -> None:
    extra = ("--no-cache",) if mode == "no-cache" else ()
    src = tmp_path / "src"
    for d in ("a", "b", "gone/sub", "keep/x/y"):
        (src / d).mkdir(parents=True)
    files = {
        "a/f1": b"1",
        "a/f2": b"2",
        "a/f3": b"3",
        "b/g1": os.urandom(300_000),
        "b/g2": b"g2",
        "t1": b"top 1",
        "t2": b"top 2",
        "t3": b"top 3",
        "t4": b"",
        "gone/x": b"x",
        "gone/y": os.urandom(200_000),
        "gone/sub/z": b"z",
        "keep/x/y/deep": b"deep",
        "swap_to_dir": b"a file that becomes a folder",
    }
    (src / "swap_to_file").mkdir()
    (src / "swap_to_file" / "one").write_bytes(b"1")
    (src / "swap_to_file" / "two").write_bytes(b"2")
    for name, data in files.items():
        (src / name).write_bytes(data)
    total = len(files) + 2
    first, _ = backup(cli, src, extra=extra)
    assert counts(first) == (total, 0, 0, 0)
    assert first["files"] == total

    (src / "t1").write_bytes(b"top 1, longer now")  # modified
    with open(src / "b" / "g1", "r+b") as fh:  # modified in place, same size
        fh.seek(100_000)
        fh.write(b"changed")
    (src / "a" / "new").write_bytes(b"new")  # added
    (src / "n" / "m").mkdir(parents=True)  # a new folder with 2 files: added
    (src / "n" / "one").write_bytes(b"n1")
    (src / "n" / "m" / "two").write_bytes(b"n2")
    (src / "t2").unlink()  # removed
    shutil.rmtree(src / "gone")  # 3 removed
    (src / "swap_to_dir").unlink()  # 1 removed ...
    (src / "swap_to_dir").mkdir()
    (src / "swap_to_dir" / "inside").write_bytes(b"i")  # ... and 1 added
    shutil.rmtree(src / "swap_to_file")  # 2 removed ...
    (src / "swap_to_file").write_bytes(b"now a file")  # ... and 1 added

    second, _ = backup(cli, src, extra=extra)
    added, modified, removed = 1 + 2 + 1 + 1, 2, 1 + 3 + 1 + 2
    unchanged = total - modified - removed
    assert counts(second) == (added, modified, removed, unchanged)
    assert second["files"] == unchanged + modified + added

    # Nothing changed: every file unchanged, nothing stored but what a snapshot needs.
    third, grown = backup(cli, src, extra=extra)
    assert counts(third) == (0, 0, 0, second["files"])
    assert third["bytes_read"] == 0, "unchanged files must not be read again"
    assert grown < 4096, grown


def test_deleted_cache_is_rebuilt_from_parent_trees(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(5):
        d = src / f"dir{i}"
        d.mkdir(parents=True)
        for j in range(20):
            (d / f"f{j}").write_bytes(os.urandom(500 + j))
    (src / "big").write_bytes(os.urandom(3 * MiB))
    first, _ = backup(cli, src)
    assert first["added"] == 101

    shutil.rmtree(cli.cache)
    second, grown = backup(cli, src)
    assert counts(second) == (0, 0, 0, 101)
    assert second["bytes_read"] == 0, "unchanged files must not be read again"
    assert grown < 4096, grown
    assert cli.cache.exists()

    (src / "dir3" / "f7").write_bytes(b"changed after the cache was rebuilt")
    third, grown = backup(cli, src)
    assert counts(third) == (0, 1, 0, 100)
    assert grown < 64 * 1024
