"""The command-line contract: every command's happy path and every error's one clear line.

All through the real `strongroom` program against a real repository (see conftest.Cli).
Exit codes: 0 success, 1 error, 2 usage error, 3 finished but some files could not be read.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PASSWORD, Cli, Result, strongroom_exe, tree_state

JSON_KEYS = {
    "snapshot",
    "added",
    "modified",
    "removed",
    "unchanged",
    "bytes_scanned",
    "bytes_uploaded",
}


def run(cli: Cli, *args: str, unset: tuple[str, ...] = (), **env: str) -> Result:
    """Run without a terminal on stdin, optionally with some variables removed."""
    full_env = {k: v for k, v in {**cli.env, **env}.items() if k not in unset}
    proc = subprocess.run(
        [*strongroom_exe(), *args],
        env=full_env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_error(res: Result, code: int, *needles: str) -> str:
    """A failure is one clear line on stderr (click usage errors: a short block), no traceback."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert "Traceback" not in res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines, "an error must say what happened"
    if code == 2 and lines[0].startswith("Usage:"):
        assert len(lines) <= 3, res.stderr
        assert lines[-1].startswith("Error:")
    else:
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith("strongroom: "), res.stderr
    assert "internal error" not in res.stderr
    for needle in needles:
        assert needle.lower() in res.stderr.lower(), (needle, res.stderr)
    return lines[-1]


def make_src(root: Path) -> Path:
    src = root / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "report.txt").write_text("quarterly numbers\n")
    (src / "docs" / "old.txt").write_text("to be removed\n")
    (src / "code").mkdir()
    (src / "code" / "main.c").write_text("int main(void) { return 0; }\n")
    (src / "code" / "main.o").write_bytes(b"\x7fELF object")
    (src / "code" / "build").mkdir()
    (src / "code" / "build" / "app").write_bytes(b"binary")
    (src / "photo.jpg").write_bytes(os.urandom(300_000))
    return src


def snapshot_ids(cli: Cli) -> list[str]:
    return [s["id"] for s in cli.run("snapshots", "--json").json()]


def ls(cli: Cli, *args: str) -> list[str]:
    return cli.run("ls", *args).stdout.splitlines()


# --------------------------------------------------------------------------------------------
# happy paths


def test_init_prints_id_and_creates_repository(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    res = cli.run("init", "--kdf-memory", "8", "--kdf-iterations", "1")
    assert "created repository" in res.stdout
    assert (cli.repo / "index.sqlite").is_file()
    assert run(cli, "snapshots", "--json").stdout.strip() == "[]"
    # A second init into the same folder must not destroy it.
    again = run(cli, "init", "--kdf-memory", "8", "--kdf-iterations", "1")
    assert_error(again, 1, "already")
    assert cli.run("snapshots", "--json").json() == []


def test_backup_snapshots_ls_diff_restore_check(cli: Cli, tmp_path: Path) -> None:
    src = make_src(tmp_path)
    app = (src / "code" / "build" / "app").stat()
    res = cli.run("backup", str(src))
    assert "saved" in res.stdout
    assert "6 added, 0 modified, 0 removed, 0 unchanged" in res.stdout
    assert res.stderr == ""

    (src / "docs" / "old.txt").unlink()
    (src / "docs" / "report.txt").write_text("quarterly numbers, revised\n")
    (src / "docs" / "new.txt").write_text("new\n")
    shutil.rmtree(src / "code" / "build")
    (src / "code" / "build").write_text("a folder became a file\n")
    second = cli.backup(src)
    assert second.keys() >= JSON_KEYS
    assert (second["added"], second["modified"], second["removed"]) == (2, 1, 2)
    assert second["unchanged"] == 3
    assert second["bytes_scanned"] == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert isinstance(second["bytes_uploaded"], int)
    assert isinstance(second["snapshot"], str)

    snaps = cli.run("snapshots", "--json").json()
    assert [s["id"] for s in snaps][-1] == second["snapshot"]
    assert len(snaps) == 2
    for s in snaps:
        assert s["paths"] == [str(src)]
        assert s["short_id"] == s["id"][:8]
    table = cli.run("snapshots").stdout
    assert snaps[0]["short_id"] in table and snaps[1]["short_id"] in table
    assert "2 snapshot(s)" in table

    first_id = snaps[0]["id"]
    assert ls(cli, first_id[:8]) == [
        "/src",
        "/src/code",
        "/src/code/build",
        "/src/code/build/app",
        "/src/code/main.c",
        "/src/code/main.o",
        "/src/docs",
        "/src/docs/old.txt",
        "/src/docs/report.txt",
        "/src/photo.jpg",
    ]
    assert ls(cli, "latest", "/src/docs") == ["/src/docs/new.txt", "/src/docs/report.txt"]
    assert ls(cli, "latest", "src/docs/") == ["/src/docs/new.txt", "/src/docs/report.txt"]
    long = ls(cli, "latest", "-l", "src/docs/report.txt")
    assert len(long) == 1
    assert long[0].startswith("-rw")
    assert f" {(src / 'docs' / 'report.txt').stat().st_size} " in long[0]
    assert long[0].endswith("/src/docs/report.txt")
    entries = [json.loads(line) for line in ls(cli, first_id, "--json", "/src/code/build")]
    assert entries == [
        {
            "path": "/src/code/build/app",
            "type": "file",
            "mode": app.st_mode & 0o7777,
            "size": 6,
            "mtime_ns": app.st_mtime_ns,
        }
    ]

    diff = cli.run("diff", first_id[:10], "latest").stdout.splitlines()
    assert "+    /src/docs/new.txt" in diff
    assert "-    /src/docs/old.txt" in diff
    assert "M    /src/docs/report.txt" in diff
    assert "T    /src/code/build" in diff
    assert "-    /src/code/build/app" in diff
    assert not any("photo" in line or "main" in line for line in diff)
    assert diff[-1] == "1 added, 2 removed, 1 modified, 1 changed type"

    target = tmp_path / "restored"
    out = cli.restore(target, first_id[:6])
    assert "restored snapshot" in out.stdout
    assert (target / "src" / "docs" / "old.txt").read_text() == "to be removed\n"
    target2 = tmp_path / "restored_latest"
    cli.restore(target2)
    assert tree_state(target2 / "src") == tree_state(src)

    check = cli.run("check")
    assert "no errors" in check.stdout
    assert "2 snapshots" in check.stdout
    assert "no errors" in cli.run("check", "--read-data").stdout


def test_backup_single_file_and_several_paths(cli: Cli, tmp_path: Path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("just a file\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x\n")
    r = cli.backup(one, other)
    assert r["added"] == 2
    assert ls(cli, "latest") == ["/one.txt", "/other", "/other/x"]
    cli.restore(tmp_path / "out")
    assert (tmp_path / "out" / "one.txt").read_text() == "just a file\n"
    assert (tmp_path / "out" / "other" / "x").read_text() == "x\n"


def test_forget_by_prefix_and_latest(cli: Cli, tmp_path: Path) -> None:
    src = make_src(tmp_path)
    ids = []
    for i in range(3):
        (src / "counter").write_text(str(i))
        ids.append(cli.backup(src)["snapshot"])
    assert snapshot_ids(cli) == ids

    res = cli.run("forget", ids[1][:8])
    assert f"removed snapshot {ids[1][:8]}" in res.stdout
    assert snapshot_ids(cli) == [ids[0], ids[2]]

    res = cli.run("forget", "latest", ids[2][:12])  # the same snapshot, named twice
    assert res.stdout.splitlines() == [f"removed snapshot {ids[2][:8]}"]
    assert snapshot_ids(cli) == [ids[0]]

    # What is left still restores and checks clean.
    cli.restore(tmp_path / "out")
    assert (tmp_path / "out" / "src" / "counter").read_text() == "0"
    assert "no errors" in cli.run("check", "--read-data").stdout

    assert_error(run(cli, "forget", "ffffffffffffffff0"), 1, "no snapshot matches")
    assert snapshot_ids(cli) == [ids[0]]
    # A backup after forgetting its parent still works and finds the data it can reuse.
    r = cli.backup(src)
    assert r["unchanged"] + r["added"] + r["modified"] == r["files"]


def test_passwd_changes_the_password(cli: Cli, tmp_path: Path) -> None:
    new_pw = tmp_path / "new-password"
    new_pw.write_text("a much better passphrase\n")
    cli.run("passwd", "--new-password-file", str(new_pw))
    assert_error(run(cli, "snapshots"), 1, "password")
    ok = run(
        cli, "snapshots", "--json", "--password-file", str(new_pw), unset=("STRONGROOM_PASSWORD",)
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == []
    pw = "a much better passphrase"
    assert_error(run(cli, "passwd", STRONGROOM_PASSWORD=pw), 2, "new-password-file")


# --------------------------------------------------------------------------------------------
# exclusion


def test_exclude_patterns_and_exclude_file(cli: Cli, tmp_path: Path) -> None:
    src = make_src(tmp_path)
    r = cli.backup(src, extra=("--exclude", "*.o", "-e", "build"))
    assert r["added"] == 4
    listed = ls(cli, "latest")
    assert "/src/code/main.o" not in listed
    assert not any("build" in p for p in listed)
    assert "/src/code/main.c" in listed
    snap = cli.run("snapshots", "--json").json()[-1]
    assert snap["excludes"] == ["*.o", "build"]

    patterns = tmp_path / "excludes.txt"
    patterns.write_text("# comment lines and blank lines are ignored\n\n*.jpg\ndocs/old.txt\n")
    r = cli.backup(src, extra=("--exclude-file", str(patterns)))
    listed = ls(cli, "latest")
    assert "/src/photo.jpg" not in listed
    assert "/src/docs/old.txt" not in listed
    assert "/src/docs/report.txt" in listed
    assert "/src/code/main.o" in listed
    assert r["files"] == 4

    missing = run(cli, "backup", str(src), "--exclude-file", str(tmp_path / "nope.txt"))
    assert missing.returncode in (1, 2)
    assert_error(missing, missing.returncode, "nope.txt")


def test_bad_exclude_pattern_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    src = make_src(tmp_path)
    assert_error(run(cli, "backup", str(src), "--exclude", "[unclosed"), 2, "[unclosed")
    bad_file = tmp_path / "bad.txt"
    bad_file.write_text("*.o\n[\n")
    assert_error(run(cli, "backup", str(src), "--exclude-file", str(bad_file)), 2)
    assert snapshot_ids(cli) == []


# --------------------------------------------------------------------------------------------
# errors


def test_wrong_password(cli: Cli, tmp_path: Path) -> None:
    src = make_src(tmp_path)
    cli.backup(src)
    target = tmp_path / "x"
    for args in (("snapshots",), ("backup", str(src)), ("restore", "latest", "-t", str(target))):
        line = assert_error(run(cli, *args, STRONGROOM_PASSWORD="not the password"), 1)
        assert "password" in line.lower()
    assert not target.exists()
    assert len(snapshot_ids(cli)) == 1


def test_password_file(cli: Cli, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    res = run(
        cli, "snapshots", "--json", "--password-file", str(pw), unset=("STRONGROOM_PASSWORD",)
    )
    assert res.returncode == 0, res.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    assert_error(run(cli, "snapshots", "--password-file", str(wrong)), 1, "password")
    assert_error(run(cli, "snapshots", "--password-file", str(tmp_path / "absent")), 2, "absent")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert_error(run(cli, "snapshots", "--password-file", str(empty)), 2, "empty")


def test_init_with_password_file_and_without_any_password(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("from a file\n")
    args = ("init", "--kdf-memory", "8", "--kdf-iterations", "1")
    res = run(cli, *args, unset=("STRONGROOM_PASSWORD",))
    assert_error(res, 2, "STRONGROOM_PASSWORD", "--password-file")
    assert not (cli.repo / "index.sqlite").exists()
    res = run(cli, *args, "--password-file", str(pw), unset=("STRONGROOM_PASSWORD",))
    assert res.returncode == 0, res.stderr
    # No password, no terminal: a clear usage error rather than a hang or a prompt.
    assert_error(run(cli, "snapshots", unset=("STRONGROOM_PASSWORD",)), 2, "no password")
    assert_error(run(cli, "snapshots", STRONGROOM_PASSWORD=""), 2, "no password")
    ok = run(cli, "snapshots", "--json", STRONGROOM_PASSWORD="from a file")
    assert ok.returncode == 0, ok.stderr


def test_missing_repository(tmp_path: Path) -> None:
    cli = Cli(tmp_path)  # never initialised
    for args in (("snapshots",), ("backup", str(tmp_path))):
        assert_error(run(cli, *args), 1, str(cli.repo), "init")
    assert not cli.repo.exists(), "a command other than init must not create the repository"
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert_error(run(cli, "snapshots", "--repo", str(empty)), 1, "no strongroom repository")
    assert_error(run(cli, "snapshots", unset=("STRONGROOM_REPO",)), 2, "--repo")


def test_init_into_non_empty_folder(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.repo.mkdir()
    (cli.repo / "precious.txt").write_text("do not touch")
    assert_error(run(cli, "init", "--kdf-memory", "8"), 1, "not empty")
    assert os.listdir(cli.repo) == ["precious.txt"]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    res = run(cli, "init", "--repo", str(not_a_dir), "--kdf-memory", "8")
    assert res.returncode in (1, 2)
    assert_error(res, res.returncode)
    assert not_a_dir.read_text() == "x"


def test_backup_path_errors(cli: Cli, tmp_path: Path) -> None:
    assert_error(run(cli, "backup", str(tmp_path / "does-not-exist")), 1, "does-not-exist")
    assert_error(run(cli, "backup"), 2)
    a, b = tmp_path / "a" / "same", tmp_path / "b" / "same"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    res = run(cli, "backup", str(a), str(b))
    assert res.returncode in (1, 2)
    assert_error(res, res.returncode, "same")
    assert snapshot_ids(cli) == []


def test_snapshot_names_unknown_ambiguous_and_empty_repo(cli: Cli, tmp_path: Path) -> None:
    assert_error(run(cli, "restore", "latest", "-t", str(tmp_path / "t")), 1, "no snapshots")
    src = make_src(tmp_path)
    ids = [cli.backup(src)["snapshot"]]
    # Back up until two IDs share their first hex digit (at most 17 backups, usually ~5).
    while len({i[0] for i in ids}) == len(ids):
        ids.append(cli.backup(src)["snapshot"])
    shared = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    for args in (("restore", shared, "-t", str(tmp_path / "t")), ("forget", shared)):
        assert_error(run(cli, *args), 1, "matches", "snapshots")
    assert len(snapshot_ids(cli)) == len(ids)
    unknown = next(c for c in "0123456789abcdef" if not any(i.startswith(c) for i in ids))
    for args in (("diff", unknown, "latest"), ("forget", "latest", unknown)):
        assert_error(run(cli, *args), 1, "no snapshot matches")
    assert len(snapshot_ids(cli)) == len(ids), "a failed forget must forget nothing"
    assert_error(run(cli, "ls", "latest", "/src/nothing/here"), 1, "not in the snapshot")
    assert_error(run(cli, "ls", "latest", "/src/photo.jpg/inside"), 1, "not a folder")


def test_usage_errors(tmp_path: Path) -> None:
    cli = Cli(tmp_path)  # usage is checked before any repository is opened
    assert_error(run(cli, "no-such-command"), 2, "no-such-command")
    assert_error(run(cli, "backup", str(tmp_path), "--no-such-option"), 2, "--no-such-option")
    assert_error(run(cli, "restore", "latest"), 2, "--target")
    assert_error(run(cli, "ls"), 2, "SNAPSHOT")
    assert_error(run(cli, "forget"), 2)
    assert_error(run(cli, "init", "--kdf-memory", "0"), 2, "--kdf-memory")
    assert run(cli, "--help").returncode == 0
    version = run(cli, "--version")
    assert version.returncode == 0
    assert "strongroom" in version.stdout


def test_restore_target_errors(cli: Cli, tmp_path: Path) -> None:
    src = make_src(tmp_path)
    cli.backup(src)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_error(run(cli, "restore", "latest", "-t", str(a_file)), 2, "a_file")
    clash = tmp_path / "clash"
    (clash / "src").mkdir(parents=True)
    (clash / "src" / "docs").write_text("a file where the snapshot has a folder")
    assert_error(run(cli, "restore", "latest", "-t", str(clash)), 1, "docs")
    assert_error(run(cli, "restore", "latest", "-t", str(tmp_path / "n"), "-i", "src/zz"), 1)


def test_second_writer_gets_a_clear_in_use_error(cli: Cli, tmp_path: Path) -> None:
    src = make_src(tmp_path)
    cli.backup(src)
    with open(cli.repo / "lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_error(run(cli, "backup", str(src)), 1, "in use")
        assert_error(run(cli, "forget", "latest"), 1, "in use")
        # Readers are not blocked by a writer.
        assert len(snapshot_ids(cli)) == 1
        assert ls(cli, "latest", "/src/docs")
    r = cli.backup(src)
    assert r["unchanged"] == 6
    assert len(snapshot_ids(cli)) == 2


def test_damaged_data_is_detected_never_restored(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(2 << 20)
    (src / "data.bin").write_bytes(payload)
    cli.backup(src)
    packs = sorted((cli.repo / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    biggest = [p for p in packs if p.is_file()][-1]
    with open(biggest, "r+b") as fh:
        fh.seek(biggest.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x55]))
    res = run(cli, "check", "--read-data")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("strongroom: error: ")
    res = run(cli, "restore", "latest", "-t", str(tmp_path / "out"))
    assert res.returncode == 1, res.stdout
    assert_error(res, 1)
    restored = tmp_path / "out" / "src" / "data.bin"
    if restored.exists():
        assert restored.read_bytes() != payload


def test_interrupted_backup_commits_nothing_and_next_backup_resumes(
    cli: Cli, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):  # three packs' worth: interrupted after the first, before the commit
        (src / f"f{i:02d}").write_bytes(os.urandom(8 << 20))
    total = 6 * (8 << 20)
    proc = subprocess.Popen(
        [*strongroom_exe(), "backup", str(src), "--json"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        # Interrupt once the first pack is durable, i.e. in the middle of the upload.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.is_file() for p in (cli.repo / "packs").rglob("*")):
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.002)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode == 0:
        pytest.skip("the backup finished before it could be interrupted")
    assert_error(Result(proc.returncode, stdout, stderr), 130, "interrupted")
    assert snapshot_ids(cli) == []
    assert "no errors" in cli.run("check").stdout

    r = cli.backup(src)
    assert r["added"] == 6
    assert r["bytes_uploaded"] < total, "what the interrupted backup stored must be reused"
    cli.restore(tmp_path / "out")
    assert tree_state(tmp_path / "out" / "src") == tree_state(src)
    assert "no errors" in cli.run("check", "--read-data").stdout
