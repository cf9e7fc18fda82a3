"""Two garbage collections of the same user at once (after a backup, from the admin socket,
from a client's prune) must not step on each other: the server runs them one at a time."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from conftest import Cli, tree_state
from strongroom.server.stores import UserStore


def test_concurrent_gc_runs_of_one_user_are_serialised(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):  # ~6 MiB of incompressible files: one pack, later mostly garbage
        (src / f"f{i}").write_bytes(os.urandom(500_000))
    first = cli.backup(src)["snapshot"]
    for i in range(8):
        (src / f"f{i}").unlink()
    cli.backup(src)
    cli.run("forget", first)

    store = UserStore(cli.repo)
    try:
        reports = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                reports.append(store.gc())
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(reports) == 3
        assert sum(r.repacked_packs + r.deleted_packs for r in reports) >= 1
        assert sum(r.repacked_packs for r in reports) <= 1  # the pack is repacked once
    finally:
        store.close()

    # Every pack file the index names exists, and nothing else is left in packs/.
    packs = {p.name for p in (cli.repo / "packs").rglob("*") if p.is_file()}
    assert "no errors" in cli.run("check", "--read-data").stdout
    out = tmp_path / "out"
    cli.restore(out)
    assert tree_state(out / "src") == tree_state(src)
    assert all(not name.endswith(".tmp") for name in packs)
