"""Helpers shared by the tests of `strongroom copy` and `strongroom-admin replicate`."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path
from typing import Any

from conftest import Cli, Result, tree_state
from netfixtures import Server

MiB = 1024 * 1024


def make_tree(root: Path) -> None:
    """~24 MiB that does not compress (three packs), small files, links, empty folders."""
    rng = random.Random(12)
    for i in range(3):
        (root / "big").mkdir(parents=True, exist_ok=True)
        (root / "big" / f"f{i}.bin").write_bytes(rng.randbytes(8 * MiB))
    for d in range(6):
        sub = root / f"dir{d}" / "inner"
        sub.mkdir(parents=True)
        for j in range(30):
            (sub / f"s{j}.txt").write_bytes(f"file {d}/{j} ".encode() * rng.randint(1, 400))
    (root / "empty").mkdir()
    # More folders than one batch of tree reads (256), and a deep chain of them.
    for d in range(300):
        (root / "many" / f"d{d:03d}").mkdir(parents=True)
        (root / "many" / f"d{d:03d}" / "f").write_text(f"{d}\n")
    deep = root.joinpath(*(f"level{i}" for i in range(40)))
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("at the bottom\n")
    os.symlink("dir0/inner/s0.txt", root / "link")
    (root / "big" / "f0.bin").chmod(0o600)


def snapshots(cli: Cli) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cli.run("snapshots", "--json").json()
    return rows


def same_records(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    keys = ("id", "time_ns", "host", "username", "paths", "tags", "parent", "excludes", "stats")
    assert [{k: s[k] for k in keys} for s in a] == [{k: s[k] for k in keys} for s in b]


def restored_equal(cli: Cli, target: Path, source: Path, snapshot: str = "latest") -> None:
    cli.restore(target, snapshot)
    assert tree_state(target / source.name) == tree_state(source)


def one_line_error(res: Result, *words: str) -> None:
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for word in words:
        assert word in lines[0], lines[0]


def blob_count(index: Path) -> int:
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0])
    finally:
        db.close()


def storage(server: Server, user: str) -> Path:
    users = server.admin("user", "list", "--json").json()
    (sid,) = [u["storage_id"] for u in users if u["name"] == user]
    return server.data_dir / "storage" / sid


def has_indexed_blobs(store: Path) -> bool:
    """Whether a pack of this store is durable and indexed (what a kill must not lose)."""
    try:
        return blob_count(store / "index.sqlite") > 0
    except sqlite3.Error:  # not created yet, or busy being created
        return False
