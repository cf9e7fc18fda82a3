#!/usr/bin/env python3
"""`strongroom copy` and `strongroom-admin replicate` on a small tree: time, MiB/s, peak RSS.

A server on 127.0.0.1 (TLS) with two accounts (each with its own keys), one backup of the
tree into the first. Then, each timed from the command's start to its exit:

- for scale, a restore of that snapshot from the account (the same reads and decryption);
- copy account -> local repository (re-encrypted, trees rewritten);
- copy account -> the other account on the same server (both over TLS);
- the same copy again (nothing to do: every snapshot is skipped);
- copy local repository -> a second local repository;
- replicate the first account to another data folder (keyless, bytes as stored).

The tree (`--data DIR`, default: this checkout's src/ and tests/ plus `--random` MiB of random
bytes) is what one first backup stores. Prints a Markdown table; CPU seconds are the command's
own (the server's are not counted), less sensitive than wall time to a busy machine.
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


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Seconds, CPU seconds (user + system) and peak RSS (KiB) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if status != 0:
        raise lb.BenchError(f"{' '.join(argv[:3])} failed: {err.strip()}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def tree_bytes(root: Path) -> int:
    return sum(
        os.lstat(os.path.join(d, f)).st_size for d, _dirs, files in os.walk(root) for f in files
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="tree to back up and copy")
    ap.add_argument("--random", type=int, default=64, help="MiB of random bytes to add")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    exe = shutil.which("strongroom", path=os.path.dirname(sys.executable)) or "strongroom"
    checkout = Path(__file__).resolve().parent.parent
    with ExitStack() as stack:
        work = Path(args.work or stack.enter_context(tempfile.TemporaryDirectory()))
        src = Path(args.data) if args.data else work / "tree"
        if not args.data:
            for part in ("src", "tests"):
                shutil.copytree(checkout / part, src / part, ignore=shutil.ignore_patterns("*.pyc"))
            with open(src / "random.bin", "wb") as fh:
                for _ in range(args.random):
                    fh.write(os.urandom(1 << 20))
        size = tree_bytes(src)
        files = sum(len(f) for _d, _s, f in os.walk(src))

        data_dir = work / "server-data"
        server_argv = [nb.sibling(exe, "strongroom-server"), "--host", "127.0.0.1", "--port", "0"]
        server_env = nb.clean_env(dict(os.environ)) | {"STRONGROOM_WEB_PORT": "0"}
        server = nb.start_server(
            [*server_argv, "--data-dir", str(data_dir)],
            server_env,
            work / "server",
            nb.STRONGROOM_READY,
            stack,
        )
        for user in ("ann", "bob"):
            nb.add_user(exe, data_dir, server, user, work / user)
        env = nb.strongroom_env(nb.clean_env(dict(os.environ)), server, "ann", work / "ann")
        env["STRONGROOM_TO_PASSWORD"] = lb.PASSWORD
        lb.run_quiet([exe, "backup", str(src)], env=env)
        local_env = {k: v for k, v in env.items() if not k.startswith("STRONGROOM_SERVER")}
        for name in ("repo", "repo2"):
            lb.run_quiet([exe, "init", "--repo", str(work / name)], env=local_env)

        to_bob = ["--to-server", server.address, "--to-user", "bob"]
        to_bob += ["--to-fingerprint", server.fingerprint]
        steps: list[tuple[str, list[str]] | tuple[str, list[str], dict[str, str]]] = [
            (
                "for scale: restore from the account",
                [exe, "restore", "latest", "--target", str(work / "restored")],
            ),
            ("copy account -> local repository", [exe, "copy", "--to-repo", str(work / "repo")]),
            ("copy account -> another account", [exe, "copy", *to_bob]),
            ("the same copy again (nothing to copy)", [exe, "copy", *to_bob]),
            (
                "copy local repository -> local repository",
                [exe, "copy", "--repo", str(work / "repo"), "--to-repo", str(work / "repo2")],
                local_env,
            ),
            (
                "replicate account -> another data folder (no key)",
                [
                    nb.sibling(exe, "strongroom-admin"),
                    "--data-dir",
                    str(data_dir),
                    "replicate",
                    "ann",
                    "--to",
                    str(work / "replica"),
                ],
            ),
        ]
        rows = [(step[0], *timed(step[1], step[2] if len(step) > 2 else env)) for step in steps]

    mib = size / (1 << 20)
    print(f"| {files} files, {mib:.0f} MiB | seconds | MiB/s | CPU seconds | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds, cpu, rss in rows:
        print(f"| {label} | {seconds:.2f} | {mib / seconds:.0f} | {cpu:.2f} | {rss // 1024} MiB |")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except lb.BenchError as exc:
        print(f"copy_bench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
