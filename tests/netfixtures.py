"""A real strongroom-server on 127.0.0.1 for network tests, and clients that talk to it.

Loaded by conftest.py. Each server runs in its own process with its own data folder on a free
port (the server binds port 0 and prints the port it got); every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PASSWORD, Cli, Result, strongroom_exe

KDF_ENV = {"STRONGROOM_INSECURE_TEST_KDF": "1"}
ADMIN_PASSWORD = "set-by-the-admin"


def exe(name: str) -> list[str]:
    found = shutil.which(name, path=os.path.dirname(sys.executable))
    module = {
        "strongroom-server": "strongroom.server.cli",
        "strongroom-admin": "strongroom.admin.cli",
    }[name]
    return [found] if found else [sys.executable, "-m", module]


class Server:
    """strongroom-server as a child process: start, stop (SIGTERM), kill (SIGKILL), restart."""

    embedded = True  # a data folder of its own (clusterfixtures.ClusterServer: False)

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra = extra
        # The web console is off unless a test asks for it (it would take port 44080).
        self.env = {**os.environ, **KDF_ENV, "STRONGROOM_WEB_PORT": "0", **(env or {})}
        self.env.pop("STRONGROOM_DEBUG", None)
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.web_port = 0
        self.fingerprint = ""
        self.log = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Server:
        port = str(self.port)  # a restart keeps its port, so clients' settings stay valid
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [
                    *exe("strongroom-server"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    port,
                    "--data-dir",
                    str(self.data_dir),
                    *self.extra,
                ],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
            if m := re.search(r"web console on https://127\.0\.0\.1:(\d+)/", line):
                self.web_port = int(m.group(1))
            if m := re.search(r"fingerprint: (SHA256:[0-9a-f]{64})", line):
                self.fingerprint = m.group(1)
                return self
        self.kill()
        raise AssertionError(f"server did not start: {''.join(lines)}\n{self.log.read_text()}")

    def stop(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def admin(self, *args: str, input: str | None = None, check: bool = True) -> Result:
        proc = subprocess.run(
            [*exe("strongroom-admin"), "--data-dir", str(self.data_dir), *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"strongroom-admin {args} exited {proc.returncode}: {proc.stderr}")
        return res

    def add_user(
        self,
        name: str,
        tmp: Path,
        *,
        directory: str = "",
        password: str = PASSWORD,
        extra: tuple[str, ...] = (),
    ) -> NetCli:
        """An account whose owner has already replaced the admin's password with `password`."""
        args = ["user", "add", name, "--password-stdin", *extra]
        if directory:
            args += ["--directory", directory]
        self.admin(*args, input=ADMIN_PASSWORD + "\n")
        client = NetCli(tmp / f"client-{name}", self, name, password)
        newpw = tmp / f"client-{name}-newpw"
        newpw.write_text(password + "\n")
        client.run(
            "passwd", "--new-password-file", str(newpw), env={"STRONGROOM_PASSWORD": ADMIN_PASSWORD}
        )
        return client


class NetCli(Cli):
    """The real `strongroom` client, pointed at a Server through the environment."""

    def __init__(self, tmp: Path, server: Server, user: str, password: str = PASSWORD) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(tmp)
        self.server = server
        self.env.pop("STRONGROOM_REPO", None)
        self.env.update(KDF_ENV)
        self.env.update(
            {
                "STRONGROOM_SERVER": server.address,
                "STRONGROOM_USER": user,
                "STRONGROOM_FINGERPRINT": server.fingerprint,
                "STRONGROOM_PASSWORD": password,
                "STRONGROOM_CONFIG_DIR": str(tmp / "config"),
            }
        )

    def run(self, *args: str, **kwargs: object) -> Result:  # type: ignore[override]
        # A restarted server may have a new port: follow it.
        self.env["STRONGROOM_SERVER"] = self.server.address
        return super().run(*args, **kwargs)  # type: ignore[arg-type]


def free_port() -> int:
    """A port free on 127.0.0.1 now (for the web console, which has no "any free port")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(cli: Cli, *args: str) -> subprocess.Popen[str]:
    """Start the real client in the background (for kills and concurrency)."""
    if isinstance(cli, NetCli):
        cli.env["STRONGROOM_SERVER"] = cli.server.address  # follow a restarted server
    return subprocess.Popen(
        [*strongroom_exe(), *args],
        env=cli.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"client did not finish in {timeout}s: {out}\n{err}") from None
    return Result(proc.returncode, out, err)


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A fresh server; with STRONGROOM_TEST_NODES=2, two scale-out nodes on PostgreSQL and
    radosgw behind a round-robin proxy (tests/clusterfixtures.py), same interface."""
    from clusterfixtures import cluster_server, nodes_wanted

    if nodes_wanted() > 1:
        yield from cluster_server(request, tmp_path)
        return
    srv = Server(tmp_path / "server-data").start()
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture
def alice(server: Server, tmp_path: Path) -> NetCli:
    return server.add_user("alice", tmp_path)
