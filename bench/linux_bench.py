#!/usr/bin/env python3
"""Benchmark strongroom against restic and borg on the Linux source tree.

One run, same data, every tool with its defaults and a local repository:

  (a) first backup, (b) backup with nothing changed,
  (c) backup after appending a line to 1% of the files, (d) full restore of the latest snapshot.

Phases are ordered so all tools read identical data: all tools (a)+(b); modify once;
all tools (c); all tools (d). See bench/README.md for usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

PROJECT = Path(__file__).resolve().parent.parent
RESULTS_DIR = PROJECT / "bench" / "results"
START, END = "<!-- linux-bench:start -->", "<!-- linux-bench:end -->"
PASSWORD = "strongroom-bench-password"
APPENDED_LINE = b"/* strongroom-bench: modified */\n"
MIB = 1024 * 1024
BUSY_LIMIT = 0.10  # flag a step when other processes used more than this share of the CPUs
BUSY = "⚠ busy:"
ALL_TOOLS = ("strongroom", "restic", "borg")
STEPS = {
    "first": "(a) first backup",
    "unchanged": "(b) backup, nothing changed",
    "changed": "(c) backup after changing 1% of the files",
    "restore": "(d) full restore of the latest snapshot",
}
# (label, step, metric, limit): strongroom / restic must be <= limit.
TARGETS = (
    ("first backup time", "first", "wall_s", 0.5),
    ("nothing-changed backup time", "unchanged", "wall_s", 0.25),
    ("1%-changed backup time", "changed", "wall_s", 0.5),
    ("restore time", "restore", "wall_s", 0.5),
    ("repository size (after (c))", "changed", "repo_bytes", 1.0),
    ("peak RSS (max over all steps)", "*", "peak_rss_kib", 1.5),
)


class BenchError(Exception):
    """A one-line, user-facing error; the harness prints it without a traceback."""


# ----------------------------------------------------------------------------- processes


@dataclass
class Measured:
    rc: int
    wall_s: float
    cpu_s: float
    peak_rss_kib: int  # max(wait4 ru_maxrss, sampled sum over the process group)
    background_cpu: float  # share of all CPUs used by *other* processes during the step
    timed_out: bool = False


def busy_cpu_seconds() -> float:
    """CPU seconds spent busy on all CPUs since boot (user+nice+system+irq+softirq+steal)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / os.sysconf("SC_CLK_TCK")


class CpuLoad:
    """`--busy`: one process spinning on a CPU for the whole run, a steady load on one core.
    Its own CPU time is not counted as other processes' background load."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL
        )

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


LOAD: CpuLoad | None = None  # set while a --busy run is going


def load_cpu_seconds() -> float:
    return LOAD.cpu_seconds() if LOAD is not None else 0.0


def wait_for_idle(max_wait: float, threshold: float = 0.10, window: float = 3.0) -> bool:
    """Wait (at most max_wait s) until the machine is idle over a whole window (our own
    --busy load aside)."""
    deadline = time.monotonic() + max_wait
    ncpu = len(os.sched_getaffinity(0))
    while time.monotonic() < deadline:
        b0, l0 = busy_cpu_seconds(), load_cpu_seconds()
        time.sleep(window)
        used = busy_cpu_seconds() - b0 - (load_cpu_seconds() - l0)
        if used / (window * ncpu) < threshold:
            return True
    return False


class ProcInfo(NamedTuple):
    pid: int
    pgid: int
    rss_kib: int
    cpu_ticks: int  # utime + stime + cutime + cstime, in clock ticks


PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def process_table() -> Iterator[ProcInfo]:
    """Every live process, read from /proc (processes that vanish meanwhile are skipped)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        cpu = sum(int(x) for x in fields[11:15])
        yield ProcInfo(int(name), int(fields[2]), int(fields[21]) * PAGE_KIB, cpu)


class GroupRssSampler(threading.Thread):
    """Samples the summed RSS of a process group, so multi-process tools are not undercounted."""

    extra_cpu_s = 0.0  # CPU of watched processes outside the group (added to the step's CPU)

    def __init__(self, pgid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pgid, self.interval = pgid, interval
        self.peak_kib = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        total = sum(p.rss_kib for p in process_table() if p.pgid == self.pgid)
        self.peak_kib = max(self.peak_kib, total)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_measured(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    timeout: float,
    cwd: Path | None = None,
    sampler: Callable[[int], GroupRssSampler] = GroupRssSampler,
) -> Measured:
    """Run argv in its own session; stdout/stderr go to log.out/log.err; measure via wait4.

    `sampler(pid)` makes the RSS sampler for the new process group (network_bench.py passes one
    that also counts a server's processes)."""
    os.sync()  # don't let the previous step's dirty pages be flushed on this step's clock
    done = threading.Lock()
    timed_out = False

    def kill() -> None:
        nonlocal timed_out
        if done.acquire(blocking=False):
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            done.release()

    with open(f"{log}.out", "wb") as out, open(f"{log}.err", "wb") as err:
        busy0, load0 = busy_cpu_seconds(), load_cpu_seconds()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        rss = sampler(proc.pid)
        rss.start()
        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            timer.cancel()
            rss.stop()
        with done:
            wall = time.monotonic() - t0
            busy = busy_cpu_seconds() - busy0 - (load_cpu_seconds() - load0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime + rss.extra_cpu_s
    return Measured(
        rc=proc.returncode,
        wall_s=wall,
        cpu_s=cpu,
        peak_rss_kib=max(usage.ru_maxrss, rss.peak_kib),
        background_cpu=max(0.0, busy - cpu) / (wall * len(os.sched_getaffinity(0))),
        timed_out=timed_out,
    )


def run_quiet(
    argv: list[str],
    cwd: Path | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> str:
    """Run a helper command; return stdout, or raise BenchError with its last stderr line."""
    try:
        res = subprocess.run(
            argv, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{argv[0]}: {exc}") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"`{' '.join(argv)}` failed ({res.returncode}): {last}")
    return res.stdout


def tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# ----------------------------------------------------------------------------- data


def ensure_linux_tree(cache: Path, skip_download: bool) -> Path:
    """Return <cache>/linux/linux-source-6.1, fetching and unpacking only what is missing."""
    tree = cache / "linux" / "linux-source-6.1"
    if tree.is_dir() and any(tree.iterdir()):
        return tree
    if (cache / "linux").exists():
        raise BenchError(f"{cache / 'linux'} exists but holds no linux-source-6.1/; remove it")
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob("linux-source-6.1_*.deb"))
    if not debs:
        if skip_download:
            raise BenchError(f"no linux-source-6.1 .deb in {cache} and --skip-download given")
        print(f"downloading linux-source-6.1 into {cache} ...", flush=True)
        run_quiet(["apt-get", "download", "linux-source-6.1"], cwd=cache, timeout=3600)
        debs = sorted(cache.glob("linux-source-6.1_*.deb"))
        if not debs:
            raise BenchError("apt-get download finished but no linux-source-6.1 .deb appeared")
    tarball = cache / "deb" / "usr/src/linux-source-6.1.tar.xz"
    if not tarball.exists():
        run_quiet(["dpkg-deb", "-x", str(debs[-1]), str(cache / "deb")], timeout=3600)
    partial = cache / "linux.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    print(f"unpacking {tarball.name} ...", flush=True)
    run_quiet(["tar", "-xf", str(tarball), "-C", str(partial)], timeout=3600)
    partial.rename(cache / "linux")
    if not tree.is_dir():
        raise BenchError(f"{tarball} did not contain linux-source-6.1/")
    return tree


def make_small_tree(root: Path) -> None:
    """Deterministic synthetic tree: ~2,000 files, a few MB, text/binary mix, duplicates."""
    rng = random.Random(20240601)
    stems = ["alpha", "beta", "gamma", "delta", "kernel", "inode"] * 40
    words = [f"{w}{i}" for i, w in enumerate(stems)]
    made: list[bytes] = []
    for i in range(2000):
        folder = root / f"dir{i % 20:02d}" / f"sub{(i // 20) % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        r = rng.random()
        if made and r < 0.10:
            data = rng.choice(made)  # exact duplicate of an earlier file
        elif r < 0.25:
            data = rng.randbytes(rng.randint(0, 12_000))  # incompressible
        elif r < 0.253:
            data = rng.randbytes(64) * rng.randint(4_000, 12_000)  # big, dedupable
        else:
            n = rng.randint(0, 600)
            data = " ".join(rng.choice(words) for _ in range(n)).encode() + b"\n"
        (folder / f"file{i:04d}.{'bin' if r < 0.253 else 'txt'}").write_bytes(data)
        made.append(data)
    (root / "empty-dir").mkdir()
    for i in range(5):
        (root / f"link{i}").symlink_to(f"dir{i:02d}/sub0")


@dataclass
class Entry:
    kind: str  # "f", "d", "l"
    size: int
    mode: int
    mtime_s: int
    link: str = ""


def index_tree(root: Path) -> dict[str, Entry]:
    """Every entry below root (root itself excluded), keyed by relative path."""
    out: dict[str, Entry] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for de in it:
                st = de.stat(follow_symlinks=False)
                rel = os.path.relpath(de.path, root)
                if de.is_symlink():
                    out[rel] = Entry("l", 0, 0, 0, os.readlink(de.path))
                elif de.is_dir(follow_symlinks=False):
                    out[rel] = Entry("d", 0, st.st_mode & 0o7777, 0)
                    stack.append(Path(de.path))
                elif de.is_file(follow_symlinks=False):
                    out[rel] = Entry("f", st.st_size, st.st_mode & 0o7777, int(st.st_mtime))
    return out


def regular_files(index: dict[str, Entry]) -> list[str]:
    return sorted(rel for rel, e in index.items() if e.kind == "f")


def warm_up(root: Path, files: list[str]) -> None:
    for rel in files:
        with open(root / rel, "rb") as fh:
            while fh.read(MIB):
                pass


def modify_one_percent(root: Path, files: list[str]) -> list[str]:
    """Append a fixed line to every 100th regular file (sorted order): the 100th, 200th, ..."""
    chosen = files[99::100]
    for rel in chosen:
        with open(root / rel, "ab") as fh:
            fh.write(APPENDED_LINE)
    return chosen


def disk_bytes(path: Path) -> int:
    """du-like: sum of regular file sizes below path (apparent size)."""
    total = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(folder, name)):
                total += st.st_size
    return total


def verify_restore(
    src: Path, src_index: dict[str, Entry], restored: Path, modified: list[str]
) -> dict[str, Any]:
    """Compare restored tree and source: entry set, kinds, sizes, symlinks, sampled bytes."""
    if not restored.is_dir():
        return {"ok": False, "summary": f"restored tree not found at {restored}"}
    got = index_tree(restored)
    missing = sorted(set(src_index) - set(got))
    extra = sorted(set(got) - set(src_index))
    common = set(src_index) & set(got)
    wrong_kind_or_size = sorted(
        r
        for r in common
        if (src_index[r].kind, src_index[r].size, src_index[r].link)
        != (got[r].kind, got[r].size, got[r].link)
    )
    files = regular_files(src_index)
    sample = sorted(set(files[:: max(1, len(files) // 250)]) | set(modified[:50]))
    sample = [r for r in sample if r in common]
    wrong_bytes = [r for r in sample if (src / r).read_bytes() != (restored / r).read_bytes()]
    wrong_mode = sum(1 for r in common if src_index[r].mode != got[r].mode)
    wrong_mtime = sum(
        1 for r in common if src_index[r].kind == "f" and src_index[r].mtime_s != got[r].mtime_s
    )
    ok = not (missing or extra or wrong_kind_or_size or wrong_bytes)
    problems = [
        f"{len(x)} {what} (e.g. {x[0]})"
        for x, what in (
            (missing, "missing"),
            (extra, "extra"),
            (wrong_kind_or_size, "wrong type/size/link"),
            (wrong_bytes, "wrong content"),
        )
        if x
    ]
    summary = (
        f"verified: {len(got):,} entries, {len(sample)} files byte-compared"
        if ok
        else "MISMATCH: " + "; ".join(problems)
    )
    if wrong_mode or wrong_mtime:
        summary += f" (metadata differs: {wrong_mode} modes, {wrong_mtime} mtimes)"
    return {
        "ok": ok,
        "summary": summary,
        "entries_source": len(src_index),
        "entries_restored": len(got),
        "compared_files": len(sample),
        "missing": len(missing),
        "extra": len(extra),
        "wrong_type_size_link": len(wrong_kind_or_size),
        "wrong_content": len(wrong_bytes),
        "wrong_mode": wrong_mode,
        "wrong_mtime": wrong_mtime,
    }


# ----------------------------------------------------------------------------- tools


@dataclass
class Tool:
    name: str
    exe: str | None
    version: str = "unavailable"
    note: str = ""
    base: Path = Path()
    failed: str = ""  # first failing step: later steps are skipped
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def repo(self) -> Path:
        return self.base / "repo"

    @property
    def home(self) -> Path:
        return self.base / "home"

    def env(self) -> dict[str, str]:
        """Passwords plus an isolated HOME/XDG/borg base so caches start empty and are counted."""
        env = dict(os.environ)
        env.update(
            HOME=str(self.home),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_DATA_HOME=str(self.home / ".local"),
            XDG_STATE_HOME=str(self.home / ".state"),
            BORG_BASE_DIR=str(self.home),
            RESTIC_PASSWORD=PASSWORD,
            BORG_PASSPHRASE=PASSWORD,
            STRONGROOM_PASSWORD=PASSWORD,
        )
        return env

    def init_argv(self) -> list[str]:
        assert self.exe
        return {
            "restic": [self.exe, "-r", str(self.repo), "init"],
            "borg": [self.exe, "init", "--encryption=repokey-blake2", str(self.repo)],
            "strongroom": [self.exe, "init", "--repo", str(self.repo)],
        }[self.name]

    def backup_argv(self, src: Path, n: int) -> list[str]:
        assert self.exe
        return {
            "restic": [self.exe, "-r", str(self.repo), "backup", "-q", str(src)],
            "borg": [self.exe, "create", f"{self.repo}::snap{n}", str(src)],
            "strongroom": [self.exe, "backup", "--repo", str(self.repo), str(src), "--json"],
        }[self.name]

    def restore_argv(self, target: Path, n: int) -> list[str]:
        assert self.exe
        return {
            "restic": [
                self.exe,
                "-r",
                str(self.repo),
                "restore",
                "latest",
                "--target",
                str(target),
            ],
            "borg": [self.exe, "extract", f"{self.repo}::snap{n}"],  # run with cwd=target
            "strongroom": [
                self.exe,
                "restore",
                "latest",
                "--repo",
                str(self.repo),
                "--target",
                str(target),
            ],
        }[self.name]

    # Hooks for network_bench.py, which reuses this harness with a server per tool.

    def initialise(self, logs: Path, args: argparse.Namespace) -> None:
        """Create the repository."""
        run_step(self, "init", self.init_argv(), logs, args)

    def rss_sampler(self, pid: int) -> GroupRssSampler:
        """The RSS sampler for a step whose process group is pid."""
        return GroupRssSampler(pid)

    def step_extras(self) -> dict[str, Any]:
        """Extra figures for the result of the step that just ran."""
        return {}

    def restored_root(self, target: Path, src: Path) -> Path:
        if self.name == "strongroom":
            return target / src.name  # /x/y/linux -> TARGET/linux
        return target / str(src).lstrip("/")  # restic and borg: TARGET/x/y/linux


def find_tool(name: str) -> Tool:
    exe = shutil.which(name)
    if exe is None and name == "strongroom":
        beside = Path(sys.executable).parent / "strongroom"
        exe = str(beside) if beside.exists() else None
    if exe is None:
        return Tool(name, None, note=f"{name}: not installed (not on PATH)")
    probe = {"restic": ["version"], "borg": ["--version"], "strongroom": ["--version"]}[name]
    try:
        version = run_quiet([exe, *probe], timeout=60).strip().splitlines()[0]
    except (BenchError, IndexError) as exc:
        if name != "strongroom":
            return Tool(name, None, note=f"{name}: unusable ({exc})")
        try:  # strongroom may not implement --version yet; --help must work
            run_quiet([exe, "--help"], timeout=60)
        except BenchError as exc2:
            return Tool(name, None, note=f"{name}: unusable ({exc2})")
        version = "strongroom (version unknown)"
    return Tool(name, exe, version=version)


def parse_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def run_step(
    tool: Tool,
    step: str,
    argv: list[str],
    logs: Path,
    args: argparse.Namespace,
    cwd: Path | None = None,
) -> dict[str, Any] | None:
    if tool.failed:
        return None
    log = logs / f"{tool.name}-{step}"
    print(f"  {tool.name:10s} {STEPS.get(step, step)} ...", end=" ", flush=True)
    if args.wait_idle > 0 and step != "init" and not wait_for_idle(args.wait_idle):
        print("(still busy after --wait-idle, measuring anyway)", end=" ", flush=True)
    m = run_measured(argv, tool.env(), log, args.timeout, cwd=cwd, sampler=tool.rss_sampler)
    res: dict[str, Any] = asdict(m) | tool.step_extras()
    res["log"] = str(log)
    if m.rc != 0:
        why = "timed out" if m.timed_out else f"exit {m.rc}"
        tool.failed = f"{STEPS.get(step, step)} failed ({why}): {tail(Path(f'{log}.err'))}"
        res["error"] = tool.failed
        print(f"FAILED ({why}); see {log}.err")
    else:
        busy = f", {BUSY} {m.background_cpu:.0%} CPU used by others" if is_busy(res) else ""
        print(f"{m.wall_s:.2f} s, {m.peak_rss_kib / 1024:.0f} MiB RSS{busy}")
    tool.results[step] = res
    return res if m.rc == 0 else None


def backup(tool: Tool, step: str, n: int, src: Path, logs: Path, args: argparse.Namespace) -> None:
    res = run_step(tool, step, tool.backup_argv(src, n), logs, args)
    if res is None:
        return
    res["repo_bytes"] = disk_bytes(tool.repo)
    res["cache_bytes"] = disk_bytes(tool.home)
    if tool.name == "strongroom":
        stats = parse_json_line(Path(res["log"] + ".out").read_text(errors="replace"))
        res["stats"] = stats
        if stats is None:
            print(f"  note: strongroom backup printed no JSON object; see {res['log']}.out")


# ----------------------------------------------------------------------------- report


def is_busy(res: dict[str, Any]) -> bool:
    return bool(res.get("background_cpu", 0.0) > BUSY_LIMIT)


def fmt_time(s: float) -> str:
    return f"{s:.2f}" if s < 10 else f"{s:.1f}"


def fmt_mib(b: float | None, digits: int = 1) -> str:
    return "—" if b is None else f"{b / MIB:,.{digits}f}"


def metric(tool: Tool, step: str, key: str) -> float | None:
    if step == "*":
        vals = [metric(tool, s, key) for s in STEPS]
        return None if None in vals else max(v for v in vals if v is not None)
    r = tool.results.get(step)
    return None if r is None or "error" in r else r.get(key)


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def step_notes(tool: Tool, step: str) -> str:
    r = tool.results.get(step)
    if tool.exe is None:
        return "unavailable"
    if r is None:
        return f"skipped ({tool.failed})" if tool.failed else "—"
    if "error" in r:
        return f"**FAILED** {r['error']}"
    notes = []
    if is_busy(r):
        notes.append(f"{BUSY} other processes used {r['background_cpu']:.0%} of the CPUs")
    if "verify" in r:
        v = r["verify"]
        notes.append(v["summary"] if v["ok"] else f"**{v['summary']}**")
    stats = r.get("stats")
    if stats:
        keys = ("added", "modified", "removed", "unchanged")
        s = ", ".join(f"{k} {stats.get(k, '?')}" for k in keys)
        up = stats.get("bytes_uploaded")
        notes.append(s + (f", uploaded {up / MIB:,.1f} MiB" if isinstance(up, int | float) else ""))
    return "; ".join(notes)


def step_table(tools: list[Tool], step: str, notes: Callable[[Tool, str], str] = step_notes) -> str:
    rows = [
        "| tool | time (s) | CPU (s) | peak RSS (MiB) | repo (MiB) | client cache (MiB) | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for t in tools:
        wall, cpu = metric(t, step, "wall_s"), metric(t, step, "cpu_s")
        rss = metric(t, step, "peak_rss_kib")
        rows.append(
            f"| {t.name} | {'—' if wall is None else fmt_time(wall)} "
            f"| {'—' if cpu is None else fmt_time(cpu)} "
            f"| {'—' if rss is None else f'{rss / 1024:,.0f}'} "
            f"| {fmt_mib(metric(t, step, 'repo_bytes'))} "
            f"| {fmt_mib(metric(t, step, 'cache_bytes'))} | {notes(t, step)} |"
        )
    by_name = {t.name: t for t in tools}
    sr = by_name.get("strongroom")
    for other in ("restic", "borg"):
        if sr is None or sr.exe is None or other not in by_name:
            continue
        o = by_name[other]
        cells = [
            ratio(metric(sr, step, k), metric(o, step, k))
            for k in ("wall_s", "cpu_s", "peak_rss_kib", "repo_bytes", "cache_bytes")
        ]
        rows.append(f"| strongroom/{other} | " + " | ".join(cells) + " | |")
    return "\n".join(rows)


def targets_table(
    tools: list[Tool], targets: tuple[tuple[str, str, str, float], ...] = TARGETS
) -> str:
    by_name = {t.name: t for t in tools}
    sr, rs = by_name.get("strongroom"), by_name.get("restic")
    rows = ["| target (strongroom vs restic) | limit | ratio | result |", "|---|---:|---:|---|"]
    for label, step, key, limit in targets:
        a = metric(sr, step, key) if sr else None
        b = metric(rs, step, key) if rs else None
        if a is None or b is None or b == 0:
            who = "strongroom" if a is None else "restic"
            why = "unavailable" if who not in by_name or not by_name[who].exe else "result missing"
            rows.append(f"| {label} | ≤ {limit}× | — | n/a ({who} {why}) |")
        else:
            rows.append(
                f"| {label} | ≤ {limit}× | {a / b:.2f}× | {'PASS' if a / b <= limit else 'MISS'} |"
            )
    return "\n".join(rows)


def render(meta: dict[str, Any], tools: list[Tool]) -> str:
    m, d = meta["machine"], meta["data"]
    lines = [
        f"## {'Synthetic smoke' if meta['mode'].startswith('small') else 'Linux source tree'} "
        f"benchmark{', busy machine' if meta.get('busy') else ''}",
        "",
        f"Generated by `python bench/linux_bench.py` on {meta['date']}.",
        "",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.0f} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}",
        *(f"- {t.name}: {t.version if t.exe else t.note}" for t in tools),
        f"- data: {d['description']}: {d['files']:,} regular files, {d['dirs']:,} directories, "
        f"{d['symlinks']:,} symlinks, {d['bytes'] / MIB:,.0f} MiB; step (c) appends one line to "
        f"every 100th regular file in sorted order ({d['modified']:,} files)",
        "- every tool uses its defaults and a local repository on the same disk; restic "
        "(repository format v2, compression auto), borg with `--encryption=repokey-blake2` "
        "(borg 1.2 has no default mode; this is its recommended secure choice on x86-64), "
        "compression lz4 (borg default)",
        "- page caches cannot be dropped here: the tree is read once before the first tool "
        "runs, so every tool sees a warm cache; `sync` runs before every measured step",
        "- phases: all tools (a)+(b), then the tree is modified once, then all tools (c), "
        "then all tools (d); restores go to an empty directory and are verified against the "
        "source (entry set, types, sizes, symlink targets, bytes of a sample of files)",
        "- time = wall clock; CPU = user+sys; peak RSS = max of `wait4` ru_maxrss and the "
        "sampled sum over the tool's process group; repo and client cache = sum of file "
        "sizes (cache = the tool's isolated HOME, i.e. client-side caches)",
        *load_note(meta),
        background_line(tools),
        "",
    ]
    for step, title in STEPS.items():
        lines += [f"### {title}", "", step_table(tools, step), ""]
    lines += ["### Targets", "", targets_table(tools), ""]
    return "\n".join(lines)


def background_line(tools: list[Tool]) -> str:
    """How much CPU other processes took during measured steps (the machine may be shared)."""
    loads = [
        (r["background_cpu"], f"{t.name} {step}")
        for t in tools
        for step, r in t.results.items()
        if step in STEPS and "background_cpu" in r
    ]
    if not loads:
        return "- background load: no steps measured"
    worst, where = max(loads)
    flagged = sum(1 for load, _ in loads if load > BUSY_LIMIT)
    line = (
        f"- background load: other processes used at most {worst:.0%} of the CPUs during a "
        f"measured step ({where})"
    )
    if flagged:
        line += (
            f"; **{BUSY} {flagged} step(s) ran on a busy machine (> {BUSY_LIMIT:.0%}); "
            "their times are not trustworthy, rerun on an idle machine**"
        )
    return line


def write_markdown(out: Path, section: str, start: str = START, end: str = END) -> None:
    """Replace the part of out between the start and end markers (append it if absent)."""
    block = f"{start}\n{section}\n{end}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        text = out.read_text()
        if start in text and end in text and text.index(start) < text.index(end):
            head, rest = text.split(start, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = f"# Benchmarks\n\n{block}\n"
    out.write_text(text)


def machine_info() -> dict[str, Any]:
    cpu = "unknown CPU"
    mem_kib = 0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "mem_gib": mem_kib / MIB,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------- main


def prepare_workdir(work: Path) -> None:
    """Empty work (only if it is ours: marked, or empty) and create the marker."""
    marker = work / ".strongroom-bench"
    if work.exists() and any(work.iterdir()) and not marker.exists():
        raise BenchError(f"{work} is not empty and not a strongroom bench dir; pick another --work")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    marker.touch()


def arg_parser(description: str, small_out: Path) -> argparse.ArgumentParser:
    """The options shared with network_bench.py; check the result with check_args."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, help="source tree to back up (default: Linux 6.1 source)")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("STRONGROOM_BENCH_DATA", "/work/bench-data")),
        help="where the Linux source is downloaded/unpacked ($STRONGROOM_BENCH_DATA)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("STRONGROOM_BENCH_WORK", "/work/bench-work")),
        help="scratch dir for the tree copy, repositories and restores",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="markdown report (default docs/BENCHMARKS.md; "
        f"with --small: {small_out.relative_to(PROJECT)})",
    )
    p.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma-separated subset")
    p.add_argument("--skip-download", action="store_true", help="never run apt-get download")
    p.add_argument("--small", action="store_true", help="synthetic ~2,000-file smoke tree")
    p.add_argument("--timeout", type=float, default=7200, help="per-step timeout (s)")
    p.add_argument("--keep", action="store_true", help="keep tree copy and restores afterwards")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="S",
        help="before each step wait up to S seconds for other processes to go idle",
    )
    p.add_argument(
        "--busy",
        action="store_true",
        help="keep one core busy with a steady CPU load while every tool runs (a busy machine); "
        "the report gets its own section",
    )
    return p


def busy_suffix(args: argparse.Namespace) -> str:
    """Busy runs have their own work dir, lock, JSON name and report section."""
    return "-busy" if args.busy else ""


def markers(name: str, args: argparse.Namespace) -> tuple[str, str]:
    tag = f"{name}{busy_suffix(args)}"
    return f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"


def load_note(meta: dict[str, Any]) -> list[str]:
    if not meta.get("busy"):
        return []
    return [
        "- **busy machine**: a process spinning in a loop (`while True: pass`) kept one of the "
        "CPUs busy during every step, for every tool; its CPU time is not counted as "
        "background load below"
    ]


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace, small_out: Path) -> None:
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in args.tools if t not in ALL_TOOLS]
    if bad or not args.tools:
        p.error(f"--tools: unknown {bad}; choose from {','.join(ALL_TOOLS)}")
    if args.small and args.data:
        p.error("--small and --data are mutually exclusive")
    if args.out is None:
        args.out = small_out if args.small else PROJECT / "docs" / "BENCHMARKS.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    small_out = RESULTS_DIR / "small-bench.md"
    p = arg_parser(__doc__.split("\n\n")[0], small_out)
    args = p.parse_args(argv)
    check_args(p, args, small_out)
    return args


def prepare_source(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """Reset work and put the tree to back up at work/tree/NAME; return it and a description."""
    pristine: Path | None = None
    if not args.small:
        pristine = (args.data or ensure_linux_tree(args.cache, args.skip_download)).resolve()
        if not pristine.is_dir():
            raise BenchError(f"--data {pristine} is not a directory")
        if work.is_relative_to(pristine) or pristine.is_relative_to(work):
            raise BenchError(f"--work {work} and the data tree {pristine} must not nest")
    prepare_workdir(work)
    if pristine is None:
        src = work / "tree" / "small-tree"
        src.mkdir(parents=True)
        make_small_tree(src)
        return src, "synthetic deterministic tree (seed 20240601)"
    src = work / "tree" / ("linux" if args.data is None else pristine.name)
    src.parent.mkdir()
    print(f"copying {pristine} -> {src} ...", flush=True)
    run_quiet(["cp", "-a", str(pristine), str(src)], timeout=3600)
    return src, f"copy of {pristine}"


def write_raw_json(mode: str, meta: dict[str, Any], tools: list[Tool]) -> Path:
    tool_info = {
        t.name: {
            "exe": t.exe,
            "version": t.version,
            "note": t.note,
            "failed": t.failed,
            "steps": t.results,
        }
        for t in tools
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raw = RESULTS_DIR / f"{mode}-bench-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    raw.write_text(json.dumps({**meta, "tools": tool_info}, indent=2, default=str))
    return raw


def bench(args: argparse.Namespace) -> int:
    global LOAD
    if args.busy:
        LOAD = CpuLoad()
    try:
        return _bench(args)
    finally:
        if LOAD is not None:
            LOAD.stop()
            LOAD = None


def _bench(args: argparse.Namespace) -> int:
    mode = ("small" if args.small else "linux") + busy_suffix(args)
    work = (args.work / mode).resolve()
    tools = find_tools(args.tools)
    src, description, files, logs = prepare_run(args, work, tools)
    index, modified, mismatch = run_phases(tools, src, files, logs, args)
    if not args.keep:
        shutil.rmtree(src.parent, ignore_errors=True)

    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode,
        "busy": args.busy,
        "machine": machine_info(),
        "data": data_info(description, files, index, modified),
    }
    section = render(meta, tools)
    print("\n" + section)
    write_markdown(args.out, section, *markers("linux-bench", args))
    raw = write_raw_json(mode, meta, tools)
    start = markers("linux-bench", args)[0]
    print(f"wrote {args.out} (the section after {start}) and {raw}")
    return report_failures(tools, logs, mismatch)


def find_tools(names: list[str]) -> list[Tool]:
    tools = [find_tool(name) for name in names]
    for t in tools:
        if t.exe is None:
            print(f"note: {t.note}; it is reported as unavailable")
    if not any(t.exe for t in tools):
        raise BenchError("none of the requested tools is available")
    return tools


def prepare_run(
    args: argparse.Namespace, work: Path, tools: list[Tool]
) -> tuple[Path, str, list[str], Path]:
    """Source tree, its description and regular files (page cache warmed), and the logs dir."""
    src, description = prepare_source(args, work)
    logs = work / "logs"
    logs.mkdir()
    files = regular_files(index_tree(src))
    print(f"warming the page cache: reading {len(files):,} files once ...", flush=True)
    warm_up(src, files)
    precompile_strongroom(tools)
    for t in tools:
        t.base = work / t.name
        t.home.mkdir(parents=True)
    return src, description, files, logs


def run_phases(
    tools: list[Tool], src: Path, files: list[str], logs: Path, args: argparse.Namespace
) -> tuple[dict[str, Entry], list[str], bool]:
    """Steps (a)-(d) for every available tool; return the final index, the modified files and
    whether a restore mismatched."""
    print("phase 1: init, (a) first backup, (b) nothing-changed backup")
    for t in (t for t in tools if t.exe):
        t.initialise(logs, args)
        backup(t, "first", 1, src, logs, args)
        backup(t, "unchanged", 2, src, logs, args)
    modified = modify_one_percent(src, files)
    index = index_tree(src)
    print(f"phase 2: appended a line to {len(modified):,} files; (c) backup")
    for t in (t for t in tools if t.exe):
        backup(t, "changed", 3, src, logs, args)
    print("phase 3: (d) restore latest snapshot into an empty dir, then verify")
    mismatch = False
    for t in (t for t in tools if t.exe):
        target = t.base / "restore"
        target.mkdir()
        res = run_step(t, "restore", t.restore_argv(target, 3), logs, args, cwd=target)
        if res is not None:
            res["verify"] = verify_restore(src, index, t.restored_root(target, src), modified)
            ok = res["verify"]["ok"]
            mismatch |= not ok
            print(f"  {t.name:10s} {'' if ok else '!!! RESTORE '}{res['verify']['summary']}")
        if not args.keep:
            shutil.rmtree(target, ignore_errors=True)
    return index, modified, mismatch


def data_info(
    description: str, files: list[str], index: dict[str, Entry], modified: list[str]
) -> dict[str, Any]:
    return {
        "description": description,
        "files": len(files),
        "dirs": sum(1 for e in index.values() if e.kind == "d"),
        "symlinks": sum(1 for e in index.values() if e.kind == "l"),
        "bytes": sum(e.size for e in index.values() if e.kind == "f"),
        "modified": len(modified),
    }


def report_failures(tools: list[Tool], logs: Path, mismatch: bool) -> int:
    failed = [t.name for t in tools if t.exe and t.failed]
    if failed:
        print(f"!!! failed: {', '.join(failed)} (see logs in {logs})")
    if mismatch:
        print("!!! at least one restore does NOT match the source")
    return 1 if failed or mismatch else 0


def precompile_strongroom(tools: list[Tool]) -> None:
    """Byte-compile strongroom as `pip install` does: this environment sets
    PYTHONDONTWRITEBYTECODE, and borg (Debian) ships compiled, so without this strongroom alone
    would recompile its modules on every run."""
    for t in tools:
        if t.name != "strongroom" or t.exe is None:
            continue
        python = Path(t.exe).parent / "python"
        if not python.exists():
            continue
        subprocess.run(
            [
                str(python),
                "-c",
                "import compileall, os, strongroom; "
                "compileall.compile_dir(os.path.dirname(strongroom.__file__), quiet=1)",
            ],
            check=False,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_locked(args, ("small" if args.small else "linux") + busy_suffix(args), bench)


def run_locked(
    args: argparse.Namespace, mode: str, run: Callable[[argparse.Namespace], int]
) -> int:
    """run(args) holding the lock of this mode in args.work; map errors to exit codes."""
    try:
        args.work.mkdir(parents=True, exist_ok=True)
        with open(args.work / f".{mode}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BenchError(f"another {mode} benchmark is running in {args.work}") from None
            return run(args)
    except (BenchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
