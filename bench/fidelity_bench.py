#!/usr/bin/env python3
"""Fidelity: what a backup and restore keeps of a tricky tree, strongroom against restic and borg.

One tree with every kind of metadata (extended attributes with binary and large values, POSIX
ACLs with a folder's default ACL, a file capability, trusted.* attributes on a file and on a
link, Linux file flags, a sparse file, hard links, a FIFO) is made with the system's own tools
(setfacl, setcap, chattr), backed up and restored by each tool with a local repository, and
compared property by property with the original. Run it as root on a filesystem with flags and
xattrs (ext4, XFS, btrfs) for every row; what cannot be made here is marked "n/a".

    python bench/fidelity_bench.py                       # all tools, writes docs/FIDELITY.md
    python bench/fidelity_bench.py --tools strongroom --out /tmp/f.md

Each tool runs with its defaults, except borg extract --sparse (borg's own switch for holes;
restic 0.14 has none). Exit status: 0, or 2 on a setup error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
START, END = "<!-- fidelity-bench:start -->", "<!-- fidelity-bench:end -->"
PASSWORD = "strongroom-fidelity-bench"
MIB = 1024 * 1024
ALL_TOOLS = ("strongroom", "restic", "borg")


def sh(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    if res.returncode not in (0, 1, 3):  # 1: borg warnings, 3: strongroom warnings
        raise RuntimeError(f"{' '.join(args[:3])} exited {res.returncode}: {res.stderr[-500:]}")
    return res.stdout + res.stderr


def ok(*args: str) -> bool:
    return subprocess.run(args, capture_output=True, check=False).returncode == 0


def xattrs(p: Path) -> dict[str, bytes]:
    try:
        return {
            n: os.getxattr(p, n, follow_symlinks=False)
            for n in os.listxattr(p, follow_symlinks=False)
        }
    except OSError:
        return {}


def flags(p: Path) -> str:
    out = subprocess.run(["lsattr", "-d", str(p)], capture_output=True, text=True, check=False)
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout else ""


# ---- the tricky tree -------------------------------------------------------------------------


@dataclass
class Check:
    label: str
    test: Callable[[Path, Path], bool]  # (source root, restored root) -> kept?
    made: bool = True  # False: this machine could not make it (not root, no tool, filesystem)
    detail: Callable[[Path], str] | None = None  # shown beside the mark (restored root)


@dataclass
class Tricky:
    src: Path
    checks: list[Check] = field(default_factory=list)


def make_tree(base: Path) -> Tricky:
    src = base / "src"
    (src / "shared" / "inner").mkdir(parents=True)
    t = Tricky(src)
    root = os.geteuid() == 0
    doc = src / "doc.txt"
    doc.write_text("a document\n")
    big = src / "data.bin"
    big.write_bytes(os.urandom(512 * 1024))
    os.link(big, src / "data-link.bin")
    os.symlink("doc.txt", src / "link")
    os.mkfifo(src / "fifo")
    (src / "shared" / "inner" / "x.txt").write_text("x\n")

    def equal(rel: str, get: Callable[[Path], object]) -> Callable[[Path, Path], bool]:
        def test(a: Path, b: Path) -> bool:
            try:
                return get(a / rel) == get(b / rel)
            except OSError:
                return False

        return test

    t.checks += [
        Check("file contents", equal("data.bin", Path.read_bytes)),
        Check("modes", equal("data.bin", lambda p: p.lstat().st_mode)),
        Check("mtimes (ns)", equal("doc.txt", lambda p: p.lstat().st_mtime_ns)),
        Check("owners", equal("doc.txt", lambda p: (p.lstat().st_uid, p.lstat().st_gid))),
        Check("symlinks", equal("link", os.readlink)),
        Check(
            "hard links",
            lambda a, b: (b / "data.bin").stat().st_ino == (b / "data-link.bin").stat().st_ino,
        ),
        Check("FIFOs", lambda a, b: stat.S_ISFIFO((b / "fifo").lstat().st_mode)),
    ]
    os.setxattr(doc, "user.comment", "naïve".encode())
    os.setxattr(big, "user.binary", bytes(range(256)) * 12)  # 3 KiB, binary
    t.checks += [
        Check("user.* xattrs", equal("doc.txt", xattrs)),
        Check(
            "binary, 3 KiB xattr values", equal("data.bin", lambda p: os.getxattr(p, "user.binary"))
        ),
    ]
    acl = shutil.which("setfacl") is not None
    if acl:
        ok("setfacl", "-m", "u:1000:r--,g:100:rw-", str(doc))
        ok("setfacl", "-m", "u:1000:rwx", str(src / "shared"))
        ok("setfacl", "-d", "-m", "u:1000:rwx,g:100:r-x", str(src / "shared"))
    t.checks += [
        Check(
            "POSIX ACL (file)",
            equal("doc.txt", lambda p: os.getxattr(p, "system.posix_acl_access")),
            acl,
        ),
        Check(
            "default ACL (folder)",
            equal("shared", lambda p: os.getxattr(p, "system.posix_acl_default")),
            acl,
        ),
    ]
    ping = src / "ping-like"
    ping.write_bytes(b"#!/bin/sh\n")
    ping.chmod(0o755)
    caps = root and shutil.which("setcap") is not None and ok("setcap", "cap_net_raw+ep", str(ping))
    t.checks.append(
        Check(
            "file capability (security.capability)",
            equal("ping-like", lambda p: os.getxattr(p, "security.capability")),
            caps,
        )
    )
    if root:
        os.setxattr(big, "trusted.note", b"root only")
        os.setxattr(src / "link", "trusted.on_link", b"link", follow_symlinks=False)
    t.checks += [
        Check(
            "trusted.* xattrs (root)",
            equal("data.bin", lambda p: os.getxattr(p, "trusted.note")),
            root,
        ),
        Check(
            "xattrs on a symlink",
            equal("link", lambda p: os.getxattr(p, "trusted.on_link", follow_symlinks=False)),
            root,
        ),
    ]
    sparse = src / "disk.img"
    with open(sparse, "wb") as fh:
        fh.write(os.urandom(MIB))
        fh.seek(256 * MIB)
        fh.write(os.urandom(MIB))
        fh.truncate(512 * MIB)
    t.checks.append(
        Check(
            "sparse file keeps its holes (512 MiB, 2 MiB of data; <= 4x that on disk)",
            lambda a, b: (
                (b / "disk.img").stat().st_size == 512 * MIB
                and (b / "disk.img").stat().st_blocks * 512 < 8 * MIB
            ),
            detail=lambda b: f"{(b / 'disk.img').stat().st_blocks * 512 / MIB:.0f} MiB on disk",
        )
    )
    for name, letter, label in (
        ("frozen", "i", "flag: immutable (i)"),
        ("journal.log", "a", "flag: append-only (a)"),
        ("shared", "d", "flag: no dump (d), on a folder"),
    ):
        p = src / name
        if not p.exists():
            p.write_text(f"{label}\n")
        made = shutil.which("chattr") is not None and ok("chattr", f"+{letter}", str(p))
        t.checks.append(Check(label, equal(name, lambda q, c=letter: c in flags(q)), made))
    return t


def measure(c: Check, src: Path, restored: Path) -> tuple[bool, str]:
    if not c.made:
        return False, ""
    try:
        return c.test(src, restored), c.detail(restored) if c.detail else ""
    except OSError as exc:
        return False, exc.strerror or str(exc)


def clear_flags(path: Path) -> None:
    if path.exists() and shutil.which("chattr"):
        subprocess.run(["chattr", "-R", "-i", "-a", str(path)], capture_output=True, check=False)


# ---- the tools -------------------------------------------------------------------------------


def run_tool(name: str, src: Path, work: Path) -> Path:
    """Back up src with the tool, restore it, and return where the restored copy is."""
    repo, target = work / f"{name}-repo", work / f"{name}-restore"
    target.mkdir()
    env = {
        **os.environ,
        "STRONGROOM_PASSWORD": PASSWORD,
        "RESTIC_PASSWORD": PASSWORD,
        "BORG_PASSPHRASE": PASSWORD,
        "STRONGROOM_CACHE_DIR": str(work / f"{name}-cache"),
        "RESTIC_CACHE_DIR": str(work / f"{name}-cache"),
        "BORG_BASE_DIR": str(work / f"{name}-cache"),
    }
    if name == "strongroom":
        exe = shutil.which("strongroom") or str(Path(sys.executable).parent / "strongroom")
        sh(exe, "init", "--repo", str(repo), "--kdf-memory", "8", "--kdf-iterations", "1", env=env)
        sh(exe, "backup", "--repo", str(repo), str(src), env=env)
        sh(exe, "restore", "latest", "--repo", str(repo), "--target", str(target), env=env)
        return target / src.name
    if name == "restic":
        sh("restic", "-r", str(repo), "init", env=env)
        sh("restic", "-r", str(repo), "backup", "-q", str(src), env=env)
        sh("restic", "-r", str(repo), "restore", "latest", "--target", str(target), env=env)
    else:
        sh("borg", "init", "--encryption=repokey-blake2", str(repo), env=env)
        sh("borg", "create", f"{repo}::a", str(src), env=env)
        sh("borg", "extract", "--sparse", f"{repo}::a", cwd=target, env=env)
    return target / str(src).lstrip("/")


def version(name: str) -> str:
    exe = shutil.which(name) or (
        str(Path(sys.executable).parent / name) if name == "strongroom" else None
    )
    if exe is None:
        return ""
    out = subprocess.run(
        [exe, "version" if name == "restic" else "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else name


# ---- report ----------------------------------------------------------------------------------


Result = dict[str, tuple[bool, str]]  # check label -> (kept, detail)


def table(t: Tricky, results: dict[str, Result | str], versions: dict[str, str]) -> str:
    tools = list(results)
    rows = [
        f"| property | {' | '.join(tools)} |",
        f"|---|{'|'.join(':---:' for _ in tools)}|",
    ]
    for c in t.checks:
        cells = []
        for name in tools:
            r = results[name]
            if isinstance(r, str):
                cells.append("—")
            elif not c.made:
                cells.append("n/a")
            else:
                kept, detail = r[c.label]
                cells.append(("✓" if kept else "✗") + (f" ({detail})" if detail else ""))
        rows.append(f"| {c.label} | {' | '.join(cells)} |")
    notes = [f"- {name}: {r}" for name, r in results.items() if isinstance(r, str)]
    made = [c.label for c in t.checks if not c.made]
    return "\n".join(
        [
            START,
            "## Fidelity: what a backup and restore keeps",
            "",
            "Generated by `bench/fidelity_bench.py` "
            f"({'root' if os.geteuid() == 0 else 'not root'}; "
            + ", ".join(v for v in versions.values() if v)
            + "). ✓ kept, ✗ lost, n/a: this machine could not make it. Defaults, except "
            "`borg extract --sparse` (restic 0.14 has no such switch).",
            "",
            *rows,
            "",
            *notes,
            *([f"- not made here: {', '.join(made)}"] if made else []),
            END,
        ]
    )


def write_section(path: Path, section: str) -> None:
    old = path.read_text() if path.exists() else "# Fidelity\n\n"
    if START in old and END in old:
        new = old[: old.index(START)] + section + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tools", default=",".join(ALL_TOOLS))
    p.add_argument("--out", type=Path, default=PROJECT / "docs" / "FIDELITY.md")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = p.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(ALL_TOOLS)
    if unknown:
        print(f"unknown tool(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fidelity-", dir=args.work))
    try:
        t = make_tree(work)
        results: dict[str, Result | str] = {}
        versions = {}
        for name in tools:
            versions[name] = version(name)
            if not versions[name]:
                results[name] = "not installed"
                continue
            try:
                restored = run_tool(name, t.src, work)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                results[name] = f"failed: {exc}"
                continue
            results[name] = {c.label: measure(c, t.src, restored) for c in t.checks}
        section = table(t, results, versions)
    finally:
        clear_flags(work)
        shutil.rmtree(work, ignore_errors=True)
    print(section)
    write_section(args.out, section)
    (PROJECT / "bench" / "results").mkdir(exist_ok=True)
    (PROJECT / "bench" / "results" / "fidelity.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
