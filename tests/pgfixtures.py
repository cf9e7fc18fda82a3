"""A real, private PostgreSQL cluster for tests: Debian's PostgreSQL 15, by initdb and pg_ctl.

Each pytest worker gets one cluster for the session (`pg_cluster`), in its own temp folder, on a
free port on 127.0.0.1 only, with its unix socket in that folder too. Each test that wants a
database gets a fresh one (`pg_dsn`: CREATE DATABASE takes a few tens of milliseconds), dropped
afterwards. The cluster can be stopped, killed, started and restarted in the middle of a test
(for "PostgreSQL went away mid-backup" tests); the next test finds it running again.

initdb refuses to run as root, so as root the cluster belongs to a dedicated system user,
`strongroom-test` (created with `useradd --system` when missing), and every PostgreSQL program
runs under it through `setpriv`. Run as anyone else, the cluster simply belongs to that user.

Settings chosen for a test machine (docs/DEPLOY-SCALEOUT.md): `fsync = off` (a commit still
reaches the kernel before it is acknowledged, so a killed server keeps it; only an OS crash could
lose it), `synchronous_commit` stays on, so "committed" means what it says after
`pg_ctl stop -m immediate` too. Every wait is bounded.

Also a command line, for benchmarks and poking around by hand:
    .venv/bin/python tests/pgfixtures.py up         # prints the DSN; Ctrl-C stops and removes it
    .venv/bin/python tests/pgfixtures.py cycle 20   # set up, use, restart, remove 20 times
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

PG_VERSION = "15"
PG_BINDIR = Path(os.environ.get("STRONGROOM_PG_BINDIR", f"/usr/lib/postgresql/{PG_VERSION}/bin"))
TEST_OS_USER = "strongroom-test"
ROLE = "strongroom"
DEFAULT_DB = "strongroom"
TIMEOUT = 30.0  # seconds for any single start, stop, initdb or SQL statement of the fixture
CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout for every connection the fixture makes


class PgError(RuntimeError):
    """The fixture could not set up, start or stop PostgreSQL (the message says why)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_os_user(name: str) -> pwd.struct_passwd:
    """The dedicated unprivileged user that owns clusters when the tests run as root."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        # Two pytest workers may race here: useradd then fails on the lock or on the name,
        # and the next look-up finds the user the other one made.
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        try:
            return pwd.getpwnam(name)
        except KeyError:
            if time.monotonic() > deadline:
                raise PgError(f"could not create the system user {name!r} (useradd)") from None
            time.sleep(0.2)


class PgCluster:
    """One private PostgreSQL cluster: initdb, start/stop/kill/restart, databases, DSNs.

    `dsn` (the default database) and `dsn_for(name)` give
    `postgresql://strongroom:PASSWORD@127.0.0.1:PORT/NAME`; the role `strongroom` has a random
    password, owns its databases and may create more (CREATEDB), but is no superuser.
    """

    def __init__(self, base: Path | None = None, *, bindir: Path = PG_BINDIR) -> None:
        self.bindir = bindir
        for prog in ("initdb", "pg_ctl", "postgres"):
            if not (bindir / prog).exists():
                raise PgError(
                    f"PostgreSQL {PG_VERSION} is not installed ({bindir / prog} is missing): "
                    "run ./scripts/test.sh as root, or apt-get install postgresql"
                )
        self.prefix: list[str] = []
        self.owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self.owner = _ensure_os_user(TEST_OS_USER)
            self.prefix = [
                "setpriv",
                f"--reuid={self.owner.pw_uid}",
                f"--regid={self.owner.pw_gid}",
                "--clear-groups",
                "--",
            ]
        # Not under pytest's temp folder: that one is 0700 root, which the owner cannot enter.
        self.base = Path(tempfile.mkdtemp(prefix="strongroom-pg-", dir=base))
        (self.base / "creator.pid").write_text(f"{os.getpid()}\n")
        self.datadir = self.base / "data"
        self.socket_dir = self.base  # the unix socket, never shared with the system's
        self.logfile = self.base / "postgres.log"
        if self.owner is not None:
            os.chown(self.base, self.owner.pw_uid, self.owner.pw_gid)
        self.base.chmod(0o700)
        self.host = "127.0.0.1"
        self.port = 0
        self.user = ROLE
        self.password = secrets.token_hex(16)
        self.dbname = DEFAULT_DB
        self._lock = threading.Lock()
        self._counter = 0
        self._reap_stale(self.base.parent)
        self._initdb()

    def _reap_stale(self, parent: Path) -> None:
        """Stop and remove the clusters of test runs that died without cleaning up (a pytest
        killed with SIGKILL: pg_ctl's postmaster does not die with it)."""
        for other in parent.glob("strongroom-pg-*"):
            try:
                creator = int((other / "creator.pid").read_text())
            except (OSError, ValueError):
                continue
            if other == self.base or self._pid_alive(creator):
                continue
            if (other / "data" / "postmaster.pid").exists():
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(other / "data"), "stop",
                    "--wait", f"--timeout={int(TIMEOUT)}", "--mode=immediate",
                )  # fmt: skip
            shutil.rmtree(other, ignore_errors=True)

    # -- running PostgreSQL's programs as the cluster's owner ----------------------------------

    def _run(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.bindir}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.base),
            "PGDATA": str(self.datadir),
        }
        try:
            res = subprocess.run(
                [*self.prefix, *args],
                env=env,
                cwd=self.base,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise PgError(f"{Path(args[0]).name} took more than {timeout:.0f}s") from None
        return res

    def _initdb(self) -> None:
        pwfile = self.base / "superuser.pw"
        pwfile.write_text(secrets.token_hex(16) + "\n")
        if self.owner is not None:
            os.chown(pwfile, self.owner.pw_uid, self.owner.pw_gid)
        res = self._run(
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.datadir),
            "--username=postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",  # the socket is in a 0700 folder: only its owner and root
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        )
        pwfile.unlink()
        if res.returncode != 0:
            raise PgError(f"initdb failed: {res.stderr.strip() or res.stdout.strip()}")
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.socket_dir}'",
            "max_connections = 200",
            "fsync = off",  # see the module's docstring: survives a killed server, not an OS crash
            "full_page_writes = off",
            "shared_buffers = 64MB",
            "log_min_messages = warning",
            "log_connections = off",
            "log_line_prefix = '%m [%p] %d '",
        ]
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# strongroom test fixture\n" + "\n".join(conf) + "\n")

    # -- life cycle ----------------------------------------------------------------------------

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args)

    def is_running(self) -> bool:
        return self._pg_ctl("status").returncode == 0

    def start(self) -> None:
        """Start the cluster (on its port: a restart keeps the DSN valid) and wait until it
        accepts connections. The first start picks a free port, retrying if it was taken."""
        with self._lock:
            tries = 1 if self.port else 3
            for attempt in range(tries):
                if not self.port or attempt:
                    self.port = free_port()
                res = self._pg_ctl(
                    "start",
                    "--wait",
                    f"--timeout={int(TIMEOUT)}",
                    f"--log={self.logfile}",
                    f"--options=-p {self.port}",
                )
                if res.returncode == 0:
                    self._bootstrap_role()
                    return
                if "Address already in use" not in self.log_tail():
                    break
            raise PgError(
                f"pg_ctl start failed: {res.stderr.strip()}\n--- postgres.log:\n{self.log_tail()}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop it: mode "fast" (disconnects clients, checkpoint), "smart" or "immediate"
        (like a crash: no checkpoint, recovery on the next start)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown pg_ctl stop mode {mode!r}")
        with self._lock:
            if not self.is_running():
                return
            res = self._pg_ctl("stop", "--wait", f"--timeout={int(TIMEOUT)}", f"--mode={mode}")
            if res.returncode != 0:
                raise PgError(f"pg_ctl stop failed: {res.stderr.strip()}")

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends exit on their own): the hardest crash."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        # Wait until the pid is gone, not just dead: pg_ctl and the next postmaster test the
        # pid in postmaster.pid with kill(pid, 0), which a zombie passes (on this machine's
        # init, an orphan's zombie stays about a second before it is reaped).
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                raise PgError(f"postmaster {pid} still there {TIMEOUT:.0f}s after SIGKILL")
            time.sleep(0.02)
        # Backends notice the postmaster is gone within moments; the next start waits for them
        # (pg_ctl start fails while old backends still hold the shared memory).
        self._wait_backends_gone()

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        pid = int(first)
        return pid if self._pid_alive(pid) else None

    @staticmethod
    def _pid_alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return True

    def _wait_backends_gone(self) -> None:
        """Wait until no process works in the data folder any more (the backends of a killed
        postmaster: they exit as soon as they notice, but still hold its shared memory)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            left = [
                int(e.name)
                for e in Path("/proc").iterdir()
                if e.name.isdigit() and self._cwd(int(e.name)) == self.datadir
            ]
            left = [pid for pid in left if self._pid_alive(pid)]
            if not left:
                return
            if time.monotonic() > deadline:
                raise PgError(f"processes {left} outlived the killed postmaster")
            time.sleep(0.05)

    @staticmethod
    def _cwd(pid: int) -> Path | None:
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return None

    def destroy(self) -> None:
        """Stop it (immediately: nothing here is kept) and remove its folder."""
        try:
            if self.is_running():
                self._pg_ctl("stop", "--wait", f"--timeout={int(TIMEOUT)}", "--mode=immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- SQL -----------------------------------------------------------------------------------

    def admin_connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection over the cluster's private unix socket (autocommit)."""
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user="postgres",
            dbname=dbname,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            options=f"-c statement_timeout={int(TIMEOUT * 1000)}",
        )

    def _bootstrap_role(self) -> None:
        with self.admin_connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
            if exists:
                return
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(self.password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DEFAULT_DB), sql.Identifier(ROLE)
                )
            )

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    @property
    def dsn(self) -> str:
        """The DSN of the cluster's default database, `strongroom`."""
        return self.dsn_for(self.dbname)

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database owned by the role; returns its name."""
        with self._lock:
            self._counter += 1
            name = f"{prefix}_{os.getpid()}_{self._counter}_{secrets.token_hex(3)}"
        with self.admin_connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(ROLE)
                )
            )
        return name

    def drop_database(self, name: str) -> None:
        with self.admin_connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """This worker's PostgreSQL cluster, running, for the whole session."""
    try:
        cluster = PgCluster()
    except PgError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """The DSN of a fresh, empty database for this test (the cluster is started if a previous
    test left it stopped); the database is dropped afterwards."""
    pg_cluster.ensure_running()
    name = pg_cluster.create_database()
    yield pg_cluster.dsn_for(name)
    pg_cluster.ensure_running()
    pg_cluster.drop_database(name)


def _cycle(n: int) -> int:
    """n times: a new cluster, started, a database, a query, a restart, a query, removed."""
    failures = 0
    starts: list[float] = []
    for i in range(1, n + 1):
        t0 = time.monotonic()
        cluster = None
        try:
            cluster = PgCluster()
            t1 = time.monotonic()
            cluster.start()
            t2 = time.monotonic()
            dsn = cluster.dsn_for(cluster.create_database())
            with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT) as conn:
                conn.execute("SELECT 1")
            t3 = time.monotonic()
            cluster.restart()
            t4 = time.monotonic()
            with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT) as conn:
                conn.execute("SELECT 1")
            starts.append(t2 - t1)
            status = (
                f"ok   (initdb {t1 - t0:.2f}s, start {t2 - t1:.2f}s, "
                f"database+query {t3 - t2:.2f}s, restart {t4 - t3:.2f}s)"
            )
        except Exception as e:  # the loop reports every kind of failure and goes on
            failures += 1
            status = f"FAIL {type(e).__name__}: {e}"
        finally:
            t5 = time.monotonic()
            if cluster is not None:
                cluster.destroy()
            status += f"; teardown {time.monotonic() - t5:.2f}s"
        print(f"cycle {i:2}/{n}: {status}", flush=True)
    if starts:
        starts.sort()
        print(
            f"{n} cycles, {failures} failed; start min {starts[0]:.2f}s, "
            f"median {starts[len(starts) // 2]:.2f}s, max {starts[-1]:.2f}s"
        )
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if argv[1:2] == ["cycle"] and len(argv) == 3 and argv[2].isdigit():
        return _cycle(int(argv[2]))
    if argv[1:] != ["up"]:
        print("usage: pgfixtures.py up | cycle N", file=sys.stderr)
        return 2
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    t0 = time.monotonic()
    cluster = PgCluster()
    t1 = time.monotonic()
    try:
        cluster.start()
        t2 = time.monotonic()
        print(f"initdb {t1 - t0:.2f}s, start {t2 - t1:.2f}s", file=sys.stderr)
        print(cluster.dsn, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
