"""Shared server state on a real PostgreSQL 15 (scale-out): the user database and the
operations tables through the same code as SQLite, sessions with heartbeats (GC's horizon),
login throttling and commit rates counted across nodes."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strongroom import db as dblayer
from strongroom.crypto import KdfParams
from strongroom.db import Database
from strongroom.errors import UsageError
from strongroom.server.nodes import SharedCommitRate, SharedSessions
from strongroom.server.opsdb import OpsDB
from strongroom.server.shared_throttle import SharedThrottle
from strongroom.server.throttle import LoginRefused
from strongroom.server.userdb import UserDB

pytest_plugins = ["pgfixtures"]
pytestmark = pytest.mark.timeout(120)

KDF = KdfParams(memory_kib=1024, iterations=1, lanes=1)


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[Database]:
    yield dblayer.postgres_database(pg_dsn)
    dblayer.close_pools()


@pytest.fixture(params=["sqlite", "postgresql"])
def userdb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UserDB]:
    if request.param == "sqlite":
        users = UserDB(tmp_path / "users.sqlite")
    else:
        users = UserDB(request.getfixturevalue("pg"))
    yield users
    users.close()


def _add(users: UserDB, name: str) -> int:
    return users.add(name, directory="", salt=b"s" * 16, kdf=KDF, auth_hash=b"h" * 32).id


def test_users_and_ops_on_both_engines(userdb: UserDB) -> None:
    uid = _add(userdb, "Ann")
    assert userdb.get("ann") is not None and userdb.get("ANN").id == uid  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="already exists"):
        _add(userdb, "aNN")
    changed = userdb.update("ann", quota=1000, append_only=True, policy='{"keep_last": 2}')
    assert changed.quota == 1000 and changed.append_only and changed.generation == 1
    userdb.record_backup(uid, 5, "ok")
    assert userdb.get_by_id(uid).last_success_ns == 5  # type: ignore[union-attr]
    userdb.set_setting("default_policy", "{}")
    userdb.set_setting("default_policy", '{"keep_daily": 1}')
    assert userdb.get_setting("default_policy") == '{"keep_daily": 1}'
    ops = OpsDB(userdb.db)
    for i in range(60):
        ops.add_event(uid, "commit", f"failure {i}\n")
    events = ops.events(uid, limit=100)
    assert len(events) == 50 and events[0].message == "failure 59"
    assert ops.raise_alert(uid, "quota", "90 %") and not ops.raise_alert(uid, "quota", "95 %")
    assert ops.clear_alert(uid, "quota").detail == "95 %"  # type: ignore[union-attr]
    ops.record_usage(uid, 10, 1, "day")
    ops.record_usage(uid, 20, 2, "day")  # one point per day
    assert [p.stored_bytes for p in ops.usage(uid)] == [10]
    ops.add_admin("Root", b"s" * 16, KDF, b"x" * 32)
    with pytest.raises(UsageError):
        ops.add_admin("root", b"s" * 16, KDF, b"x" * 32)
    assert ops.admin("ROOT") is not None and ops.admins() == ["Root"]
    assert userdb.delete("ann", purge=True) is not None
    assert userdb.pending_purges() == [changed.storage_id]


def test_two_nodes_share_users(pg: Database, pg_dsn: str) -> None:
    """A second 'node' (another UserDB on the same database) sees the first one's rows; the
    schema is made once, whoever comes first."""
    one = UserDB(pg)
    two = UserDB(dblayer.postgres_database(pg_dsn))
    _add(one, "bob")
    assert two.get("bob") is not None


def test_sessions_heartbeat_and_expiry(pg: Database) -> None:
    UserDB(pg)  # the schema, with the cluster tables
    a = SharedSessions(pg, "node-a", "127.0.0.1:1", interval_s=0.5, missed=2)  # 1 s to live
    b = SharedSessions(pg, "node-b", "127.0.0.1:2", interval_s=0.5, missed=2)
    a.start()
    b.start()
    assert a.oldest_session_ns("s1") is None and not b.in_use("s1")
    tok_a, tok_b = object(), object()
    a.login("s1", 1, tok_a)
    time.sleep(0.01)
    b.login("s1", 1, tok_b)
    first = b.oldest_session_ns("s1")
    assert first is not None and b.in_use("s1")
    assert a.oldest_session_ns("s1", exclude=tok_a) > first  # type: ignore[operator]
    # Node a goes silent: after two missed beats its session no longer holds GC back.
    for _ in range(6):
        time.sleep(0.25)
        assert b.beat()
    assert b.oldest_session_ns("s1") > first  # type: ignore[operator]
    assert not a.beat()  # it finds out it was presumed dead (its sessions must end)
    b.logout(tok_b)
    assert not b.in_use("s1")
    b.stop()
    assert pg.query("SELECT node_id FROM nodes") == [("node-a",)]


def test_throttle_counts_across_nodes(pg: Database) -> None:
    """Failures on one node delay and then lock the account on the other; a success from a
    known address is not held back by a stranger's guesses."""
    UserDB(pg)
    settings = {"free_attempts": 2, "base_delay": 0.3, "lockout_after": 4, "lockout_base": 60}
    one, two = SharedThrottle(pg, **settings), SharedThrottle(pg, **settings)  # type: ignore[arg-type]

    async def guess(throttle: SharedThrottle, address: str, ok: bool = False) -> float:
        started = time.monotonic()
        async with throttle.attempt("carol", address) as attempt:
            attempt.succeeded() if ok else attempt.failed()
        return time.monotonic() - started

    async def scenario() -> None:
        await guess(one, "10.0.0.1", ok=True)  # the owner: now known from .1
        await guess(one, "10.0.0.2")
        await guess(two, "10.0.0.3")
        assert await guess(one, "10.0.0.4") >= 0.3  # third failure: delayed
        assert await guess(two, "10.0.0.5") >= 0.6  # fourth: delayed more, then locked
        with pytest.raises(LoginRefused):
            await guess(one, "10.0.0.6")
        with pytest.raises(LoginRefused):
            await guess(two, "10.0.0.7")
        await guess(two, "10.0.0.1", ok=True)  # the owner, from where they logged in before

    asyncio.run(scenario())
    row = pg.query("SELECT failures FROM login_throttle WHERE key = 'a:10.0.0.1'")
    assert row == [(0,)]  # successes leave the address's count as it was


def test_parallel_guesses_are_answered_one_after_another(pg: Database) -> None:
    UserDB(pg)
    nodes = [SharedThrottle(pg, free_attempts=0, base_delay=0.1, lockout_after=100) for _ in "ab"]

    async def guess(throttle: SharedThrottle) -> float:
        async with throttle.attempt("dave", "10.1.1.1") as attempt:
            attempt.failed()
        return time.monotonic()

    async def scenario() -> list[float]:
        return await asyncio.gather(*(guess(nodes[i % 2]) for i in range(6)))

    started = time.monotonic()
    ends = sorted(asyncio.run(scenario()))
    # Delays 0.1, 0.2, 0.4, ... booked one after another across both "nodes".
    assert ends[-1] - started >= 0.1 + 0.2 + 0.4 + 0.8 + 1.6
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(ends))


def test_commit_rate_across_nodes(pg: Database) -> None:
    users = UserDB(pg)
    uid = _add(users, "erin")
    one, two = SharedCommitRate(pg, 3), SharedCommitRate(pg, 3)
    assert [one.allow(uid), two.allow(uid), one.allow(uid)] == [True, True, True]
    assert not two.allow(uid) and not one.allow(uid)
    assert SharedCommitRate(pg, 3).allow(uid + 1)
