#!/usr/bin/env python3
"""Reading one large file through `strongroom mount` compared with `strongroom restore`.

A server on 127.0.0.1 (TLS), one account, one backup of a file of random bytes (nothing to
gain from compression or dedup). Then, each timed from the command's start to the last byte:

- restore of the file to a folder;
- `cat` through a fresh mount with an empty disk cache (every blob from the server);
- `cat` through a second fresh mount (the blobs now from the disk cache, still decrypted and
  checked on the way);
- the same over a local repository (`--repo`), restore and mount.

The mount's time includes its start (login, snapshot list) and the kernel's page cache is
dropped from the picture by using a fresh mount for each read (`kernel_cache` keeps pages only
for the life of a mount). Prints a Markdown table; `--size` in MiB (default 512).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import linux_bench as lb
import network_bench as nb


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def _mounted_cat(exe: str, env: dict[str, str], mp: Path, rel: str, expect: int) -> float:
    """Seconds from `strongroom mount` to the last byte of `cat` through it."""
    mp.mkdir(exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [exe, "mount", str(mp)], env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise lb.BenchError(
                    f"mount did not start: {proc.stderr.read() if proc.stderr else ''}"
                )
            time.sleep(0.01)
        with open(mp / "latest" / rel, "rb") as fh:
            got = 0
            while block := fh.read(1 << 20):
                got += len(block)
        elapsed = time.perf_counter() - start
        if got != expect:
            raise lb.BenchError(f"read {got} bytes through the mount, expected {expect}")
        return elapsed
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="file size in MiB")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    exe = shutil.which("strongroom", path=os.path.dirname(sys.executable)) or "strongroom"
    size = args.size * 1024 * 1024
    with ExitStack() as stack:
        work = Path(args.work or stack.enter_context(tempfile.TemporaryDirectory()))
        src = work / "src"
        src.mkdir(parents=True, exist_ok=True)
        with open(src / "big.bin", "wb") as fh:
            for _ in range(args.size):
                fh.write(os.urandom(1 << 20))
        rel = "src/big.bin"
        rows: list[tuple[str, float]] = []

        data_dir = work / "server-data"
        argv = [nb.sibling(exe, "strongroom-server"), "--host", "127.0.0.1", "--port", "0"]
        server_env = nb.clean_env(dict(os.environ)) | {"STRONGROOM_WEB_PORT": "0"}
        argv += ["--data-dir", str(data_dir)]
        server = nb.start_server(argv, server_env, work / "server", nb.STRONGROOM_READY, stack)
        home = work / "home"
        nb.add_user(exe, data_dir, server, "bench", home)
        env = nb.strongroom_env(nb.clean_env(dict(os.environ)), server, "bench", home)
        lb.run_quiet([exe, "backup", str(src)], env=env)
        target = work / "restored"
        rows.append(
            (
                "server: restore",
                _timed(
                    lambda: lb.run_quiet(
                        [exe, "restore", "latest", "--target", str(target)], env=env
                    )
                ),
            )
        )
        shutil.rmtree(target)
        shutil.rmtree(home / "cache", ignore_errors=True)
        rows.append(
            (
                "server: mount + cat, empty disk cache",
                _mounted_cat(exe, env, work / "mp", rel, size),
            )
        )
        rows.append(
            (
                "server: mount + cat, blobs in the disk cache",
                _mounted_cat(exe, env, work / "mp", rel, size),
            )
        )

        repo_env = {**env, "STRONGROOM_REPO": str(work / "repo")}
        for name in ("STRONGROOM_SERVER", "STRONGROOM_USER", "STRONGROOM_FINGERPRINT"):
            repo_env.pop(name)
        lb.run_quiet([exe, "init", "--repo", str(work / "repo")], env=repo_env)
        lb.run_quiet([exe, "backup", str(src)], env=repo_env)
        rows.append(
            (
                "--repo: restore",
                _timed(
                    lambda: lb.run_quiet(
                        [exe, "restore", "latest", "--target", str(target)], env=repo_env
                    )
                ),
            )
        )
        rows.append(("--repo: mount + cat", _mounted_cat(exe, repo_env, work / "mp", rel, size)))

    print(f"| {args.size} MiB of random bytes | seconds | MiB/s |")
    print("|---|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} | {args.size / seconds:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
