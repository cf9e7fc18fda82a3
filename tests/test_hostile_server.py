"""A compromised server against the real client: what it can break, and what the client notices.

Each test runs a real strongroom-server on 127.0.0.1 and puts the tampering TLS proxy of
hostile_server.py in front of it; the real `strongroom` client is configured with the proxy's
address and fingerprint, so for the client the proxy *is* its server (one whose machine an
attacker controls). The proxy then truncates, duplicates, injects, miscounts and swaps what the
real server answers.

Every test marked "fails on the code before the client's stream checks" was run against the
client of 8e16fe2 (before client/remote.py held streamed answers to their requests): there the
client either exited 0 (missing files, zero-filled holes, a wrong listing, a skipped check) or
failed with an "internal error" (an assert or KeyError on the server's word). Since then the
restorer checks, for any repository, that each planned blob arrives once (97f626b); a network
restore now meets the client's stream checks first, and the restore tests here assert their
message. The tests of swapped snapshot records are guards: the records' authentication (AES-GCM,
snapshot ID as AAD) caught those before, and must keep doing so. The tests that pass everywhere
(the transparent proxy, regrouped parts) show the harness and the checks raise no false alarm.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli, Result, tree_state
from hostile_server import (
    Out,
    ProxiedCli,
    Proxy,
    Request,
    Rewrite,
    StreamEdit,
    serve_proxy,
)
from netfixtures import NetCli, Server
from strongroom.protocol import messages as m

pytestmark = pytest.mark.timeout(180)

KiB = 1024
MiB = 1024 * KiB
MTIME = 1_700_000_000_000_000_000  # a fixed past time, so no file is "racy" (just modified)


# ---- helpers ---------------------------------------------------------------------------------


def make_tree(root: Path, seed: int) -> Path:
    """~9 MiB of incompressible files: a ReadBlobs of their contents, and a ReadAll, come back
    in several ~4 MiB parts. Twelve one-blob files and one file of several chunks (a chunk the
    server keeps back would be a zero-filled hole in it), plus a small one (bundled)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        (root / f"part{i:02}.bin").write_bytes(rng.randbytes(512 * KiB))
    (root / "big.bin").write_bytes(rng.randbytes(3 * MiB))
    (root / "notes.txt").write_text(f"version {seed}\n" * 50)
    for p in [*root.iterdir(), root]:
        os.utime(p, ns=(MTIME + seed * 10**9, MTIME + seed * 10**9))
    return root


def one_line_error(res: Result, *needles: str) -> str:
    """The failure a person sees: a non-zero exit, one line on stderr, no traceback, and not
    an "internal error" (the client understood what the server did)."""
    context = f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert res.returncode != 0, context
    assert "Traceback" not in res.stderr + res.stdout, context
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, context
    assert lines[0].startswith("strongroom: error: "), context
    assert "internal error" not in lines[0], context
    for needle in needles:  # "a|b": either
        assert any(n in lines[0].lower() for n in needle.lower().split("|")), (
            f"{needle!r} not in {lines[0]!r}"
        )
    return lines[0]


def fails(res: Result, needle: str) -> None:
    """A command that reports several problems (check) and then fails: no traceback, no
    internal error, and the problem named (`needle`: one of "a|b")."""
    context = f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert res.returncode != 0, context
    assert "Traceback" not in res.stderr + res.stdout, context
    assert "internal error" not in res.stderr, context
    assert any(n in res.stderr.lower() for n in needle.lower().split("|")), context


def restored_files(target: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(target)): p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()
    }


def many_ids(request: Request) -> bool:
    """A ReadBlobs of file contents (a restore reads its one root tree first, on its own)."""
    return isinstance(request.msg, m.ReadBlobs) and len(request.msg.ids) > 1


def count_items(part: m.Message) -> int:
    if isinstance(part, m.Blobs):
        return len(part.blobs)
    if isinstance(part, m.Ids):
        return len(part.ids)
    assert isinstance(part, m.SnapshotRows)
    return len(part.rows)


def recount(parts: list[m.Message]) -> list[m.Message]:
    """Parts followed by an End that counts them truthfully (a careful liar)."""
    return [*parts, m.End(sum(count_items(p) for p in parts))]


def edit_rows(
    parts: list[m.Message], change: Callable[[list[tuple[Any, ...]]], list[tuple[Any, ...]]]
) -> list[m.Message]:
    """All snapshot rows of a SnapshotRows answer, changed, as one part."""
    rows = [row for p in parts if isinstance(p, m.SnapshotRows) for row in p.rows]
    return [m.SnapshotRows(change(rows))]


@pytest.fixture
def proxy(server: Server) -> Iterator[Proxy]:
    with serve_proxy(server) as p:
        yield p


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "home" / "data", seed=1)


@pytest.fixture
def snapshot(alice: NetCli, source: Path) -> str:
    """One snapshot of `source`, made directly (not through the proxy)."""
    out: str = alice.backup(source)["snapshot"]
    return out


def tamper(proxy: Proxy, cli: Cli, hooks: StreamEdit | Rewrite) -> ProxiedCli:
    proxy.hooks = hooks
    return ProxiedCli(cli, proxy)


# ---- the proxy itself ------------------------------------------------------------------------


def test_proxy_without_hooks_is_transparent(
    alice: NetCli, proxy: Proxy, source: Path, tmp_path: Path
) -> None:
    """The harness changes nothing by itself: a backup, a full check and a restore through it
    work and restore bit-exact; it records what the client sent on each connection."""
    me = ProxiedCli(alice, proxy)
    snap = me.backup(source)["snapshot"]
    assert "blobs read and verified" in me.run("check", "--read-data").stdout
    me.restore(tmp_path / "out", snap[:8])
    assert tree_state(tmp_path / "out" / source.name) == tree_state(source)

    assert proxy.connections == 3
    for conn in (1, 2, 3):
        sent = proxy.sent_types(conn)
        assert sent[:3] == ["Hello", "AuthParamsRequest", "Login"], sent
        assert sent[-1] == "Bye", sent
    backup, check, restore = (set(proxy.sent_types(c)) for c in (1, 2, 3))
    assert {"PutBlobs", "ManifestPart", "Commit"} <= backup
    assert {"ListSnapshots", "ListIds", "ReadAll", "GetManifest"} <= check
    assert {"ListSnapshots", "ReadBlobs"} <= restore and "PutBlobs" not in restore
    assert proxy.received_types(1)[:3] == ["Welcome", "AuthParams", "LoginOk"]
    # What a later test asserts after a refused login: the messages themselves are kept.
    hello = proxy.sent(1)[0].msg
    assert isinstance(hello, m.Hello) and hello.version == m.PROTOCOL_VERSION


# ---- truncated streams -----------------------------------------------------------------------


def drop_second_blob(part: m.Message) -> m.Message:
    assert isinstance(part, m.Blobs) and len(part.blobs) > 2
    return m.Blobs([b for i, b in enumerate(part.blobs) if i != 1])


TRUNCATIONS: dict[str, Callable[[list[m.Message], m.End, Request], list[m.Message]]] = {
    # The server stops early: the last part never comes, End still counts it.
    "last part dropped": lambda parts, end, req: [*parts[:-1], end],
    # A careful liar also makes End agree with what it sent.
    "last part dropped, End recounted": lambda parts, end, req: recount(parts[:-1]),
    "one blob dropped inside a part, End recounted": lambda parts, end, req: recount(
        [drop_second_blob(parts[0]), *parts[1:]]
    ),
}


@pytest.mark.parametrize("how", list(TRUNCATIONS))
def test_truncated_restore_fails(
    alice: NetCli, proxy: Proxy, snapshot: str, source: Path, tmp_path: Path, how: str
) -> None:
    """Finding 6a. Fails on the code before the client's stream checks: restore exits 0 with
    files missing, or zero-filled where the dropped chunk of big.bin belongs."""
    edit = StreamEdit(m.ReadBlobs, TRUNCATIONS[how], only=many_ids)
    me = tamper(proxy, alice, edit)
    target = tmp_path / "out"
    res = me.run("restore", snapshot[:8], "--target", str(target), check=False)
    assert edit.edited == 1
    one_line_error(res, "server sent an incomplete answer", "requested blobs missing")
    # What came before the end of the stream may be on disk; what the client reports as
    # restored must never include the truncated answer: the files are not all there.
    assert restored_files(target / source.name) != restored_files(source)


@pytest.mark.parametrize("how", ["last part dropped", "last part dropped, End recounted"])
def test_truncated_full_read_fails_check(
    alice: NetCli, proxy: Proxy, snapshot: str, how: str
) -> None:
    """Fails on the code before the client's stream checks: `check --read-data` reported "no
    errors" about blobs the server never sent to be verified."""
    edit = StreamEdit(m.ReadAll, TRUNCATIONS[how])
    me = tamper(proxy, alice, edit)
    res = me.run("check", "--read-data", check=False)
    assert edit.edited == 1
    one_line_error(res, "server sent an incomplete answer", "missing from the full read")


# ---- duplicated and unrequested blobs --------------------------------------------------------


def repeat_first_blob(parts: list[m.Message], end: m.End, req: Request) -> list[m.Message]:
    first, last = parts[0], parts[-1]
    assert isinstance(first, m.Blobs) and isinstance(last, m.Blobs)
    return recount([*parts[:-1], m.Blobs([*last.blobs, first.blobs[0]])])


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(repeat_first_blob, id="one blob sent twice"),
        pytest.param(lambda parts, end, req: recount([*parts, parts[0]]), id="a part replayed"),
    ],
)
def test_duplicated_blobs_fail_restore(
    alice: NetCli,
    proxy: Proxy,
    snapshot: str,
    tmp_path: Path,
    edit: Callable[[list[m.Message], m.End, Request], list[m.Message]],
) -> None:
    """Fails on the code before the client's stream checks: the duplicate was written again and
    restore exited 0 (a file of several chunks was even finished before its last chunk)."""
    hooks = StreamEdit(m.ReadBlobs, edit, only=many_ids)
    res = tamper(proxy, alice, hooks).run(
        "restore", snapshot[:8], "--target", str(tmp_path / "out"), check=False
    )
    assert hooks.edited == 1
    one_line_error(res, "server sent a wrong answer", "twice")


def test_duplicated_blobs_fail_check(alice: NetCli, proxy: Proxy, snapshot: str) -> None:
    """Fails on the code before the client's stream checks (the full read counted a blob twice
    and reported no errors)."""
    hooks = StreamEdit(m.ReadAll, repeat_first_blob)
    res = tamper(proxy, alice, hooks).run("check", "--read-data", check=False)
    assert hooks.edited == 1
    one_line_error(res, "server sent a wrong answer", "twice in the full read")


def test_unrequested_blob_fails_restore(
    alice: NetCli, proxy: Proxy, snapshot: str, tmp_path: Path
) -> None:
    """A valid blob of another snapshot of the same user, slipped into a restore's answer.
    Fails on the code before the client's stream checks: it was ignored and restore exited 0."""
    other = make_tree(tmp_path / "elsewhere" / "other", seed=2)
    captured: list[tuple[bytes, int, bytes]] = []

    def capture(msg: m.Message, req: Request) -> Out | None:
        if isinstance(msg, m.PutBlobs):
            captured.extend(msg.blobs)
        return None

    tamper(proxy, alice, Rewrite(on_request=capture)).backup(other)
    bid, _type, stored = max(captured, key=lambda b: len(b[2]))  # a data blob, not a tree

    def inject(parts: list[m.Message], end: m.End, req: Request) -> list[m.Message]:
        assert isinstance(req.msg, m.ReadBlobs) and bid not in req.msg.ids
        return recount([*parts, m.Blobs([(bid, m.BLOB_INTACT, stored)])])

    hooks = StreamEdit(m.ReadBlobs, inject, only=many_ids)
    res = tamper(proxy, alice, hooks).run(
        "restore", snapshot[:8], "--target", str(tmp_path / "out"), check=False
    )
    assert hooks.edited == 1
    one_line_error(res, "server sent a wrong answer", "not requested")


def test_tree_answered_with_another_snapshots_tree(
    alice: NetCli, proxy: Proxy, snapshot: str, source: Path, tmp_path: Path
) -> None:
    """Asked for snapshot 1's root tree, the server sends snapshot 2's (valid, under its own
    ID). Fails on the code before the client's stream checks: `ls` listed snapshot 2's files as
    snapshot 1's and exited 0 (the tree was verified against the ID the server named), and
    restore failed with an internal KeyError."""
    second = make_tree(tmp_path / "v2" / "data", seed=3)
    (second / "only-in-two.txt").write_text("two\n")
    snap2 = alice.backup(second)["snapshot"]
    trees = {s["id"]: bytes.fromhex(s["tree"]) for s in alice.run("snapshots", "--json").json()}
    root1, root2 = trees[snapshot], trees[snap2]

    seen: dict[bytes, bytes] = {}

    def record(msg: m.Message, req: Request | None) -> Out:
        if isinstance(msg, m.Blobs):
            seen.update((bid, data) for bid, _status, data in msg.blobs)
        return [msg]

    tamper(proxy, alice, Rewrite(on_response=record)).run("ls", snap2[:8])
    assert root2 in seen

    def swap(msg: m.Message, req: Request | None) -> Out:
        if isinstance(msg, m.Blobs) and req is not None and req.msg == m.ReadBlobs([root1]):
            return [m.Blobs([(root2, m.BLOB_INTACT, seen[root2])])]
        return [msg]

    me = tamper(proxy, alice, Rewrite(on_response=swap))
    listing = me.run("ls", snapshot[:8], check=False)
    assert "only-in-two.txt" not in listing.stdout
    one_line_error(listing, "server sent a wrong answer", "not requested")
    restore = me.run("restore", snapshot[:8], "--target", str(tmp_path / "out"), check=False)
    one_line_error(restore, "server sent a wrong answer", "not requested")
    assert not (tmp_path / "out" / source.name / "only-in-two.txt").exists()


# ---- End counts that lie, parts of the wrong type --------------------------------------------

COMMANDS: dict[type[m.Message], tuple[str, ...]] = {
    m.ReadBlobs: ("restore", "latest", "--target", "{out}"),
    m.ListSnapshots: ("snapshots",),
    m.GetManifest: ("check",),
    m.ListIds: ("check",),
    m.ReadAll: ("check", "--read-data"),
}


@pytest.mark.parametrize("request_type", list(COMMANDS), ids=lambda t: t.__name__)
@pytest.mark.parametrize(
    "lie",
    [
        pytest.param(
            lambda parts, end, req: [*parts, m.End(end.count + 1)], id="End counts one more"
        ),
        pytest.param(
            lambda parts, end, req: [*parts, m.End(max(end.count - 1, 0))], id="End counts one less"
        ),
    ],
)
def test_end_count_lies(
    alice: NetCli,
    proxy: Proxy,
    snapshot: str,
    tmp_path: Path,
    request_type: type[m.Message],
    lie: Callable[[list[m.Message], m.End, Request], list[m.Message]],
) -> None:
    """Every streamed answer is held to its End count. Fails on the code before the client's
    stream checks, which never looked at the count: every command here exited 0."""
    hooks = StreamEdit(request_type, lie)
    args = [a.format(out=tmp_path / "out") for a in COMMANDS[request_type]]
    res = tamper(proxy, alice, hooks).run(*args, check=False)
    assert hooks.edited >= 1
    one_line_error(res, "server sent an inconsistent answer", "announced")


@pytest.mark.parametrize("request_type", list(COMMANDS), ids=lambda t: t.__name__)
def test_part_of_the_wrong_type(
    alice: NetCli, proxy: Proxy, snapshot: str, tmp_path: Path, request_type: type[m.Message]
) -> None:
    """An OK where a part of a stream belongs. Fails on the code before the client's stream
    checks: an assert on the server's word ("internal error: AssertionError")."""
    hooks = StreamEdit(request_type, lambda parts, end, req: [m.Ok(7), *parts, end])
    args = [a.format(out=tmp_path / "out") for a in COMMANDS[request_type]]
    res = tamper(proxy, alice, hooks).run(*args, check=False)
    assert hooks.edited >= 1
    one_line_error(res, "server sent a wrong answer", "Ok in")


# ---- swapped, repeated and hidden snapshot records -------------------------------------------


@pytest.fixture
def two_snapshots(alice: NetCli, source: Path, snapshot: str) -> tuple[str, str]:
    """Two snapshots of one folder: `snapshot` (seed 1), then the latest (seed 4)."""
    for p in source.iterdir():
        p.unlink()
    make_tree(source, seed=4)
    latest: str = alice.backup(source)["snapshot"]
    return snapshot, latest


def assert_nothing_restored(target: Path) -> None:
    assert not target.exists() or not any(target.rglob("*")), sorted(target.rglob("*"))


Rows = list[tuple[Any, ...]]


def swap_records(rows: Rows, first: str, latest: str) -> Rows:
    record = {r[0]: r[2] for r in rows}
    other = {first: latest, latest: first}
    return [(r[0], r[1], record[other.get(r[0], r[0])], *r[3:]) for r in rows]


def latest_takes_first_id(rows: Rows, first: str, latest: str) -> Rows:
    return [(first, *r[1:]) if r[0] == latest else r for r in rows]


def latest_replaced_by_first(rows: Rows, first: str, latest: str) -> Rows:
    row = {r[0]: r for r in rows}
    return [row[first] if r[0] == latest else r for r in rows]


@pytest.mark.parametrize(
    "change, needle",
    [
        # Guard (caught before the stream checks too): each record is sealed with its ID as AAD.
        pytest.param(swap_records, "failed authentication", id="records swapped"),
        # Guard too: caught by the record's authentication before, now earlier (repeated ID).
        pytest.param(
            latest_takes_first_id,
            "listed twice|failed authentication",
            id="a row given another's ID",
        ),
        # Fails on the code before the stream checks: `restore latest` restored the older
        # snapshot, silently, and `snapshots` listed one snapshot twice, both with exit 0.
        pytest.param(latest_replaced_by_first, "listed twice", id="one row replayed for another"),
    ],
)
def test_swapped_snapshot_rows(
    alice: NetCli,
    proxy: Proxy,
    two_snapshots: tuple[str, str],
    tmp_path: Path,
    change: Callable[[Rows, str, str], Rows],
    needle: str,
) -> None:
    """Whatever the server does with the rows, no command uses a snapshot it got wrong, and
    restore never writes another snapshot's files in its place."""
    first, latest = two_snapshots

    def edit(parts: list[m.Message], end: m.End, req: Request) -> list[m.Message]:
        return [*edit_rows(parts, lambda rows: change(rows, first, latest)), end]

    me = tamper(proxy, alice, StreamEdit(m.ListSnapshots, edit))
    one_line_error(me.run("snapshots", check=False), needle)
    fails(me.run("check", check=False), needle)
    for snap in ("latest", first[:8], latest[:8]):
        target = tmp_path / f"out-{snap}"
        one_line_error(me.run("restore", snap, "--target", str(target), check=False), needle)
        assert_nothing_restored(target)


def test_hidden_snapshot(
    alice: NetCli,
    proxy: Proxy,
    two_snapshots: tuple[str, str],
    source: Path,
    tmp_path: Path,
) -> None:
    """What the client can and cannot tell when the server hides its latest snapshot.

    A server that leaves a row out but still counts it is caught (fails on the code before the
    stream checks, which exited 0). One that also counts truthfully is NOT caught: a snapshot
    the server hides looks exactly like one never made, so `restore latest` restores the one
    before, with exit 0. This is the rollback docs/SECURITY.md admits; the assertions below
    pin down that limitation, so a future defence (e.g. the client remembering the snapshots
    it made) will show up here."""
    first, latest = two_snapshots

    def hide(parts: list[m.Message], end: m.End, req: Request) -> list[m.Message]:
        return edit_rows(parts, lambda rows: [r for r in rows if r[0] != latest])

    careless = StreamEdit(m.ListSnapshots, lambda parts, end, req: [*hide(parts, end, req), end])
    one_line_error(
        tamper(proxy, alice, careless).run("snapshots", check=False),
        "server sent an inconsistent answer",
    )

    careful = StreamEdit(m.ListSnapshots, lambda parts, end, req: recount(hide(parts, end, req)))
    me = tamper(proxy, alice, careful)
    assert [s["id"] for s in me.run("snapshots", "--json").json()] == [first]
    me.restore(tmp_path / "out", "latest")
    older = make_tree(tmp_path / "seed1" / source.name, seed=1)
    assert tree_state(tmp_path / "out" / source.name) == tree_state(older)


def test_stream_checks_keep_the_server_honest_about_nothing_else(
    alice: NetCli, proxy: Proxy, snapshot: str, source: Path, tmp_path: Path
) -> None:
    """Parts regrouped (one blob per part, in reverse order) with a true End are a valid
    answer: the checks hold the server to *what* it sends, not to how it cuts it up."""

    def regroup(parts: list[m.Message], end: m.End, req: Request) -> list[m.Message]:
        blobs = [b for p in parts for b in p.blobs]  # type: ignore[attr-defined]
        return [*(m.Blobs([b]) for b in reversed(blobs)), end]

    hooks = StreamEdit(m.ReadBlobs, regroup)
    me = tamper(proxy, alice, hooks)
    me.restore(tmp_path / "out", snapshot[:8])
    assert hooks.edited >= 2
    assert tree_state(tmp_path / "out" / source.name) == tree_state(source)
    hooks = StreamEdit(m.ReadAll, regroup)
    assert "no errors" in tamper(proxy, alice, hooks).run("check", "--read-data").stdout
    assert hooks.edited == 1
