"""Shared fixtures: every test drives the real `strongroom` program on real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "correct horse battery staple"


def strongroom_exe() -> list[str]:
    exe = shutil.which("strongroom", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "strongroom.cli.main"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture(scope="session", autouse=True)
def _bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Let the many short strongroom processes reuse compiled bytecode (kept out of src/).

    Also lowers the client's Argon2id floor for the whole suite (hundreds of logins at 1 MiB,
    1 pass instead of 64 MiB, 3 passes); the tests of the floor itself remove the variable
    from the client they run (tests/test_adversarial_login.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
        mp.setenv("PYTHONPYCACHEPREFIX", str(tmp_path_factory.getbasetemp() / "pycache"))
        mp.setenv("STRONGROOM_INSECURE_TEST_KDF", "1")
        yield


class Cli:
    """Runs the real command line against one repository, with a private cache folder."""

    PREFIX: tuple[str, ...] = ()  # e.g. a command that drops privileges

    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "repo"
        self.cache = tmp / "cache"
        self.env = {
            **os.environ,
            "STRONGROOM_PASSWORD": PASSWORD,
            "STRONGROOM_CACHE_DIR": str(self.cache),
            "STRONGROOM_REPO": str(self.repo),
        }
        self.env.pop("STRONGROOM_DEBUG", None)
        self.cwd: Path | None = None

    def run(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 300,
    ) -> Result:
        proc = subprocess.run(
            [*self.PREFIX, *strongroom_exe(), *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            cwd=self.cwd,
        )
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"strongroom {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return res

    def init(self) -> None:
        # Small Argon2 cost keeps the suite fast; the format stores the cost, so this is real.
        self.run("init", "--kdf-memory", "8", "--kdf-iterations", "1")

    def backup(self, *paths: str | Path, check: bool = True, extra: tuple[str, ...] = ()) -> Any:
        res = self.run("backup", *map(str, paths), "--json", *extra, check=check)
        return res.json() if res.stdout.strip() else None

    def restore(self, target: Path, snapshot: str = "latest", *extra: str) -> Result:
        return self.run("restore", snapshot, "--target", str(target), *extra)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    c = Cli(tmp_path)
    c.init()
    yield c


def tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """What restore must reproduce: type, mode, mtime (ns), content or link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = os.fsencode(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            elif p.is_file():
                out[rel] = ("file", st.st_mode, st.st_mtime_ns, p.read_bytes())
            else:
                out[rel] = ("other", st.st_mode)
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Each phase's report on the test item (`item.rep_call`): fixtures that keep evidence
    of a failure (the browser tests' screenshots) look at it."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


# Network fixtures (a real strongroom-server per test): see tests/netfixtures.py.
pytest_plugins = ["netfixtures", "pgfixtures", "s3fixtures", "clusterfixtures"]
