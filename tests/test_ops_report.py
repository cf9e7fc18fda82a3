"""A client tells the server about a backup that failed before reaching it (issue 10)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from netfixtures import NetCli, Server
from strongroom.protocol import messages as m
from test_server_hostile import assert_no_tracebacks, connect


def test_a_reported_failure_shows_as_failed_with_a_clean_message(
    server: Server, alice: NetCli, tmp_path: Path
) -> None:
    src = tmp_path / "src"  # not tmp_path itself: the server's log there keeps changing
    src.mkdir()
    (src / "f.txt").write_text("x")
    alice.backup(src)
    with connect(server, "alice") as raw:
        answer = raw.call(m.ReportFailure("server unreachable\x1b[31m\nFAKE LOG LINE"))
        assert answer == m.Ok()
    (row,) = [u for u in json.loads(server.admin("user", "list", "--json").stdout)]
    assert row["last_backup_result"] == "failed"
    db = sqlite3.connect(server.data_dir / "users.sqlite")
    try:
        (message,) = db.execute("SELECT message FROM events").fetchone()
    finally:
        db.close()
    assert message == "server unreachable [31m FAKE LOG LINE"
    log = server.log.read_text()
    assert "reports a failed backup" in log and "\nFAKE LOG LINE" not in log
    assert_no_tracebacks(server)
