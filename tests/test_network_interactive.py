"""The client on a terminal, as a person meets it: with no settings at all, `strongroom backup`
asks for server, user and password, shows the certificate fingerprint and asks to trust it,
then offers to remember; `strongroom login` makes a new user replace the admin's password."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import PASSWORD, strongroom_exe
from netfixtures import ADMIN_PASSWORD, KDF_ENV, Server
from terminal import Terminal

pytestmark = pytest.mark.timeout(120)


def _bare_env(tmp_path: Path) -> dict[str, str]:
    """No STRONGROOM_* settings except private config/cache folders and the cheap test KDF."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(KDF_ENV)
    env["STRONGROOM_CONFIG_DIR"] = str(tmp_path / "config")
    env["STRONGROOM_CACHE_DIR"] = str(tmp_path / "cache")
    env["COLUMNS"] = "200"
    return env


def test_first_backup_asks_everything_then_remembers(server: Server, tmp_path: Path) -> None:
    server.add_user("carol", tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "letter.txt").write_text("dear diary")
    env = _bare_env(tmp_path)

    t = Terminal([*strongroom_exe(), "backup", str(src)], env)
    t.answer("Server (host:port)", server.address)
    t.answer("User name", "carol")
    t.answer("Password for carol", PASSWORD)
    t.expect(server.fingerprint)  # shown before anything is sent
    t.answer("Trust this server?", "y")
    t.answer("Remember server", "y")
    t.expect("files: 1 added")
    assert t.finish() == 0

    saved = json.loads((tmp_path / "config" / "client.json").read_text())
    assert saved["server"] == server.address and saved["user"] == "carol"
    assert saved["fingerprints"] == {server.address: server.fingerprint}
    assert PASSWORD not in (tmp_path / "config" / "client.json").read_text()

    # Next time only the password is asked: server, user and the pinned certificate are known.
    t = Terminal([*strongroom_exe(), "snapshots"], env)
    t.answer("Password for carol", PASSWORD)
    t.expect("1 snapshot(s)")
    assert t.finish() == 0
    assert "Trust this server" not in t.seen


def test_untrusted_fingerprint_answer_no(server: Server, tmp_path: Path) -> None:
    server.add_user("dave", tmp_path)
    env = _bare_env(tmp_path)
    t = Terminal(
        [*strongroom_exe(), "snapshots", "--server", server.address, "--user", "dave"], env
    )
    t.answer("Password for dave", PASSWORD)
    t.answer("Trust this server?", "n")
    t.expect("not trusted")
    assert t.finish() == 1
    assert "Traceback" not in t.seen
    assert not (tmp_path / "config" / "client.json").exists()


def test_login_makes_a_new_user_choose_a_password(server: Server, tmp_path: Path) -> None:
    server.admin("user", "add", "erin", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    env = _bare_env(tmp_path)
    t = Terminal([*strongroom_exe(), "login"], env)
    t.answer("Server (host:port)", server.address)
    t.answer("User name", "erin")
    t.answer("Password for erin", ADMIN_PASSWORD)
    t.answer("Trust this server?", "y")
    t.expect("set by the admin")
    t.answer("New password:", "erin's own password")
    t.answer("New password (again):", "erin's own password")
    t.expect("logged in as erin")
    assert t.finish() == 0

    # The admin's password no longer works; erin's does, without any question.
    t = Terminal([*strongroom_exe(), "snapshots"], env)
    t.answer("Password for erin", ADMIN_PASSWORD)
    t.expect("wrong user name or password")
    assert t.finish() == 1
    t = Terminal([*strongroom_exe(), "snapshots"], env)
    t.answer("Password for erin", "erin's own password")
    t.expect("0 snapshot(s)")
    assert t.finish() == 0
