#!/usr/bin/env python3
"""Benchmark forget + garbage collection: strongroom's server against restic and borg.

A history of N daily snapshots (default 30) of the same tree, ~1% of the files changed each
day, is built with every tool; then each tool applies `--keep-daily 7 --keep-weekly 4` and
reclaims the space: strongroom on the server side, without any key (`strongroom-admin forget`,
once with the server stopped and once through a running server's admin socket, on two copies
of the same data folder), restic with `forget --prune`, borg with `prune` + `compact`.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import linux_bench as lb
import network_bench as nb

START, END = "<!-- lifecycle-bench:start -->", "<!-- lifecycle-bench:end -->"
USER = "bench"
FIRST_DAY = dt.date(2026, 10, 1)
SEED = "strongroom-lifecycle-bench"
TARGET = 0.3  # strongroom's forget + GC time must be at most this share of restic's
# The measured lifecycle steps, in report order: (tool, step, label).
ROWS = (
    ("strongroom", "forget", "strongroom, server stopped (`strongroom-admin` does the work)"),
    ("strongroom", "forget-online", "strongroom, server running (admin socket; server does it)"),
    ("restic", "forget", "restic `forget --prune`"),
    ("borg", "forget", "borg `prune` + `compact`"),
)


# ----------------------------------------------------------------------------- peak RSS


def vm_kib(pid: int | str, field: str) -> int:
    """A `VmXXX:` figure (KiB) from /proc/PID/status; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class HwmSampler(lb.GroupRssSampler):
    """Peak RSS of a process group from each process's own high-water mark (VmHWM).

    lb.run_measured reports max(wait4 ru_maxrss, sampled RSS). Linux keeps a process's maximum
    RSS across exec, so the ru_maxrss of any child of this harness is at least the harness's
    own RSS when it forked (~60 MiB during the Linux run): a tool that needs less is reported
    at the harness's size. VmHWM is the new program's alone. The figure is the sum over the
    group's processes of the largest VmHWM seen for each (exact for one process, an upper bound
    for several), read every SAMPLE_INTERVAL s: growth in the last interval before exit is
    missed."""

    def __init__(self, pgid: int) -> None:
        super().__init__(pgid, nb.SAMPLE_INTERVAL)
        self.hwm: dict[int, int] = {}

    def sample(self) -> None:
        procs = [p for p in lb.process_table() if p.pgid == self.pgid]
        self.peak_kib = max(self.peak_kib, sum(p.rss_kib for p in procs))
        for p in procs:
            self.hwm[p.pid] = max(self.hwm.get(p.pid, 0), vm_kib(p.pid, "VmHWM"))

    def figures(self) -> dict[str, Any]:
        hwm = sum(self.hwm.values())
        if not hwm:  # too short to be sampled: keep run_measured's figure
            return {}
        return {
            "peak_rss_kib": max(hwm, self.peak_kib),
            "rss_source": "VmHWM",
            "harness_rss_kib": vm_kib("self", "VmRSS"),
        }


# ----------------------------------------------------------------------------- tools


@dataclass
class LocalTool(lb.Tool):
    """restic or borg with a local repository, peak RSS from HwmSampler."""

    _hwm: HwmSampler | None = field(default=None, repr=False)

    def rss_sampler(self, pid: int) -> lb.GroupRssSampler:
        self._hwm = HwmSampler(pid)
        return self._hwm

    def step_extras(self) -> dict[str, Any]:
        return self._hwm.figures() if self._hwm else {}


@dataclass
class ServerTool(nb.NetTool):
    """strongroom behind strongroom-server. `watch` is the server whose processes a measured
    step also counts (RSS sampled together with the step's own process group, CPU read from
    /proc); None measures the step's process group alone."""

    watch: nb.Server | None = None
    _hwm: HwmSampler | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        if self.server is None or self.server.proc.poll() is not None:
            return nb.clean_env(lb.Tool.env(self))  # admin steps: no client settings at all
        return super().env()

    def rss_sampler(self, pid: int) -> lb.GroupRssSampler:
        if self.watch is None:
            self._sampler = None
            self._hwm = HwmSampler(pid)
            return self._hwm
        self._sampler = nb.JointRssSampler({pid}, server_pgid=self.watch.pgid)
        return self._sampler

    def step_extras(self) -> dict[str, Any]:
        if self._sampler is None:
            return self._hwm.figures() if self._hwm else {}
        # The sampled sum of admin tool + server, without the harness-inflated ru_maxrss.
        joint = self._sampler.figures() | {"rss_source": "sampled"}
        return joint | ({"peak_rss_kib": self._sampler.peak_kib} if self._sampler.peak_kib else {})

    @property
    def admin(self) -> str:
        assert self.exe
        return nb.sibling(self.exe, "strongroom-admin")

    @property
    def online_dir(self) -> Path:
        """The copy of the data folder that is forgotten through the running server."""
        return self.base / "online" / "server-data"


def find_tools(names: list[str]) -> list[lb.Tool]:
    """restic and borg with local repositories (their prune runs on the client anyway);
    strongroom behind its server."""
    tools = lb.find_tools(names)
    return [
        (ServerTool if t.name == "strongroom" else LocalTool)(
            t.name, t.exe, version=t.version, note=t.note
        )
        for t in tools
    ]


def day_time(day: int) -> dt.datetime:
    """Noon, local time, of day `day` (1-based) of the history."""
    return dt.datetime.combine(FIRST_DAY + dt.timedelta(days=day - 1), dt.time(12))


def backup_argv(t: lb.Tool, src: Path, day: int) -> list[str]:
    assert t.exe
    when = day_time(day)
    if t.name == "strongroom":
        return [t.exe, "backup", str(src), "--time", f"{when:%Y-%m-%d %H:%M}", "--json"]
    if t.name == "restic":
        stamp = f"{when:%Y-%m-%d %H:%M:%S}"
        return [t.exe, "-r", str(t.repo), "backup", "-q", "--time", stamp, str(src)]
    utc = when.astimezone(dt.UTC)  # borg's --timestamp is UTC; the others take local time
    archive = f"{t.repo}::day-{day:02d}"
    return [t.exe, "create", "--timestamp", f"{utc:%Y-%m-%dT%H:%M:%S}", archive, str(src)]


def keep_options(args: argparse.Namespace) -> list[str]:
    return ["--keep-daily", str(args.keep_daily), "--keep-weekly", str(args.keep_weekly)]


# ----------------------------------------------------------------------------- phases


def build_history(
    tools: list[lb.Tool],
    src: Path,
    files: list[str],
    logs: Path,
    args: argparse.Namespace,
    stack: ExitStack,
) -> list[int]:
    """Day 1..N: change ~1% of the files (day 1 too), then every tool backs up the same tree.
    Returns how many files were changed each day."""
    quick = argparse.Namespace(**{**vars(args), "wait_idle": 0})  # backups are not the target
    for t in (t for t in tools if t.exe):
        if not isinstance(t, ServerTool) or serve(t, t.data_dir, logs, stack, "init"):
            t.initialise(logs, quick)
    changed = []
    for day in range(1, args.days + 1):
        order = list(files)
        random.Random(f"{SEED}-{day}").shuffle(order)
        changed.append(len(lb.modify_one_percent(src, order)))  # every 100th of a new shuffle
        print(f"day {day:2d} ({day_time(day):%Y-%m-%d}): appended a line to {changed[-1]:,} files")
        for t in (t for t in tools if t.exe):
            res = lb.run_step(t, f"day{day:02d}", backup_argv(t, src, day), logs, quick)
            if res is not None and day == args.days:
                res["repo_bytes"] = lb.disk_bytes(t.repo)
    return changed


def serve(t: ServerTool, data_dir: Path, logs: Path, stack: ExitStack, step: str) -> bool:
    """Start strongroom-server on data_dir as t.server, stopped when stack closes. If it does
    not start, that is the result of `step` and t's later steps are skipped."""
    try:
        t.server = nb.start_strongroom_server(t.exe or "", data_dir, logs, stack)
        return True
    except lb.BenchError as exc:
        t.failed = f"server did not start: {exc}"
        t.results[step] = {"error": t.failed}
        print(f"  strongroom {step}: {t.failed}")
        return False


def snapshot_count_admin(t: ServerTool, data_dir: Path) -> int | None:
    rows = json.loads(
        lb.run_quiet([t.admin, "--data-dir", str(data_dir), "usage", "--json"], env=t.env())
    )
    return next((int(r["snapshots"]) for r in rows if r["name"] == USER), None)


def prepare_strongroom(t: ServerTool, args: argparse.Namespace) -> int | None:
    """Stop the server, set the policy, copy the data folder for the online run."""
    assert t.server
    t.server.stop()
    admin = [t.admin, "--data-dir", str(t.data_dir)]
    lb.run_quiet([*admin, "user", "set", USER, *keep_options(args)], env=t.env())
    t.online_dir.parent.mkdir(parents=True)
    lb.run_quiet(["cp", "-a", str(t.data_dir), str(t.online_dir)], timeout=3600)
    if args.keep:  # the state before the forget, to profile or repeat it by hand
        before = t.base / "before" / "server-data"
        before.parent.mkdir(parents=True)
        lb.run_quiet(["cp", "-a", str(t.data_dir), str(before)], timeout=3600)
    return snapshot_count_admin(t, t.data_dir)


def forget_strongroom(t: ServerTool, logs: Path, args: argparse.Namespace) -> None:
    try:
        before = prepare_strongroom(t, args)
    except (lb.BenchError, ValueError, KeyError, TypeError) as exc:
        t.failed = f"preparing the forget failed: {exc}"
        t.results["forget"] = {"error": t.failed}
        print(f"  strongroom: {t.failed}")
        return
    repo_before = lb.disk_bytes(t.repo)
    # 1. Server stopped: strongroom-admin runs retention + GC itself, under the writer lock.
    t.watch = None
    argv = [t.admin, "--data-dir", str(t.data_dir), "forget", USER, "--json"]
    res = lb.run_step(t, "forget", argv, logs, args)
    if res is not None:
        finish_strongroom(t, res, t.data_dir, before, repo_before, logs, args)
    # 2. Server running: the same request goes through the admin socket, the server does it.
    failed, t.failed = t.failed, ""
    with ExitStack() as stack:
        serve(t, t.online_dir, logs, stack, "forget-online")
        t.watch = t.server
        argv = [t.admin, "--data-dir", str(t.online_dir), "forget", USER, "--json"]
        res = lb.run_step(t, "forget-online", argv, logs, args)
        t.watch = None
        if res is not None:
            storage = t.online_dir / "storage"
            res["repo_bytes_before"] = repo_before
            res["repo_bytes"] = lb.disk_bytes(storage)
            res["snapshots_before"] = before
            res["report"] = admin_report(res)
            verify_strongroom(t, res, logs, "online", args)
    t.failed = failed or t.failed


def admin_report(res: dict[str, Any]) -> dict[str, Any] | None:
    answer = lb.parse_json_line(Path(res["log"] + ".out").read_text(errors="replace"))
    return (answer or {}).get(USER)


def finish_strongroom(
    t: ServerTool,
    res: dict[str, Any],
    data_dir: Path,
    before: int | None,
    repo_before: int,
    logs: Path,
    args: argparse.Namespace,
) -> None:
    res["repo_bytes_before"] = repo_before
    res["repo_bytes"] = lb.disk_bytes(data_dir / "storage")
    res["snapshots_before"] = before
    res["report"] = admin_report(res)
    with ExitStack() as stack:  # the client needs the server for check --read-data
        try:
            t.server = nb.start_strongroom_server(t.exe or "", data_dir, logs, stack)
        except lb.BenchError as exc:
            res["check"] = {"ok": False, "summary": f"server did not start: {exc}"}
            return
        verify_strongroom(t, res, logs, "offline", args)


def verify_strongroom(
    t: ServerTool, res: dict[str, Any], logs: Path, tag: str, args: argparse.Namespace
) -> None:
    """With t.server running on the forgotten data: list the snapshots, check --read-data."""
    assert t.exe
    try:
        snaps = json.loads(lb.run_quiet([t.exe, "snapshots", "--json"], env=t.env()))
        res["kept"] = sorted(s["time"][:10] for s in snaps)
    except (lb.BenchError, ValueError, KeyError, TypeError) as exc:
        res["kept_error"] = str(exc)
    res["check"] = check(
        [t.exe, "check", "--read-data"], t.env(), logs / f"strongroom-check-{tag}", args
    )


def check(argv: list[str], env: dict[str, str], log: Path, args: argparse.Namespace) -> dict:
    """Run a repository check (not part of the measured figures); keep its verdict."""
    m = lb.run_measured(argv, env, log, args.timeout)
    out, err = (last_line(Path(f"{log}.{s}")) for s in ("out", "err"))
    return {
        "ok": m.rc == 0,
        "rc": m.rc,
        "wall_s": m.wall_s,
        "command": " ".join([Path(argv[0]).name, *("R" if "/" in a else a for a in argv[1:])]),
        "summary": (out or err or "ok (no output)") if m.rc == 0 else f"exit {m.rc}: {err or out}",
    }


def last_line(path: Path) -> str:
    """The last non-blank line of a log, safe inside a markdown table."""
    lines = [x for x in lb.tail(path, 5).split(" | ") if x.strip()]
    return lines[-1].strip().replace("|", "/") if lines else ""


def forget_restic(t: lb.Tool, logs: Path, args: argparse.Namespace) -> None:
    assert t.exe
    before = restic_kept(t)
    repo_before = lb.disk_bytes(t.repo)
    argv = [t.exe, "-r", str(t.repo), "forget", *keep_options(args), "--prune"]
    res = lb.run_step(t, "forget", argv, logs, args)
    if res is None:
        return
    res.update(repo_bytes_before=repo_before, repo_bytes=lb.disk_bytes(t.repo))
    res["snapshots_before"] = len(before) if before is not None else None
    res["kept"] = restic_kept(t)
    res["check"] = check([t.exe, "-r", str(t.repo), "check"], t.env(), logs / "restic-check", args)


def restic_kept(t: lb.Tool) -> list[str] | None:
    assert t.exe
    try:
        out = lb.run_quiet([t.exe, "-r", str(t.repo), "snapshots", "--json"], env=t.env())
        return sorted(s["time"][:10] for s in json.loads(out))
    except (lb.BenchError, ValueError, KeyError, TypeError):
        return None


def forget_borg(t: lb.Tool, logs: Path, args: argparse.Namespace) -> None:
    """prune, then compact (borg >= 1.2 frees space only in compact): one step for the report."""
    assert t.exe
    before = borg_kept(t)
    repo_before = lb.disk_bytes(t.repo)
    prune = lb.run_step(t, "prune", [t.exe, "prune", *keep_options(args), str(t.repo)], logs, args)
    if prune is None:
        return
    compact = lb.run_step(t, "compact", [t.exe, "compact", str(t.repo)], logs, args)
    if compact is None:
        return
    parts = (prune, compact)
    wall = sum(p["wall_s"] for p in parts)
    res: dict[str, Any] = {
        "rc": 0,
        "wall_s": wall,
        "cpu_s": sum(p["cpu_s"] for p in parts),
        "peak_rss_kib": max(p["peak_rss_kib"] for p in parts),
        "background_cpu": sum(p["background_cpu"] * p["wall_s"] for p in parts) / (wall or 1),
        "timed_out": False,
        "parts": {"prune": prune["wall_s"], "compact": compact["wall_s"]},
        "log": compact["log"],
        "repo_bytes_before": repo_before,
        "repo_bytes": lb.disk_bytes(t.repo),
        "snapshots_before": len(before) if before is not None else None,
        "kept": borg_kept(t),
    }
    res["check"] = check([t.exe, "check", str(t.repo)], t.env(), logs / "borg-check", args)
    t.results["forget"] = res


def borg_kept(t: lb.Tool) -> list[str] | None:
    assert t.exe
    try:
        out = lb.run_quiet([t.exe, "list", "--json", str(t.repo)], env=t.env())
        return sorted(a["time"][:10] for a in json.loads(out)["archives"])
    except (lb.BenchError, ValueError, KeyError, TypeError):
        return None


def run_lifecycle(tools: list[lb.Tool], logs: Path, args: argparse.Namespace) -> None:
    policy = " ".join(keep_options(args))
    print(f"forget + GC with {policy} (measured), then each tool's check")
    for t in (t for t in tools if t.exe and not t.failed):
        if isinstance(t, ServerTool):
            forget_strongroom(t, logs, args)
        elif t.name == "restic":
            forget_restic(t, logs, args)
        else:
            forget_borg(t, logs, args)
        for step in ("forget", "forget-online"):
            r = t.results.get(step)
            if r and "check" in r:
                c = r["check"]
                print(f"  {t.name:10s} {step}: {'' if c['ok'] else '!!! '}{c['summary']}")


# ----------------------------------------------------------------------------- report


def result(tools: list[lb.Tool], name: str, step: str) -> dict[str, Any] | None:
    t = next((t for t in tools if t.name == name), None)
    r = t.results.get(step) if t else None
    return None if r is None or "error" in r else r


def kept_mismatch(tools: list[lb.Tool]) -> str:
    """'' if every tool kept the same days, else a one-line warning."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, step, _ in ROWS:
        r = result(tools, name, step)
        if r and r.get("kept") is not None:
            who = f"{name} (server running)" if step == "forget-online" else name
            groups.setdefault(tuple(r["kept"]), []).append(who)
    if len(groups) <= 1:
        return ""
    days = "; ".join(
        f"{', '.join(who)}: {len(k)} ({', '.join(d[5:] for d in k)})" for k, who in groups.items()
    )
    warning = f"the tools kept different snapshots: {days}"
    if any(who == ["borg"] for who in groups.values()):
        warning += (
            " (borg 1.2's `--keep-weekly` skips a week whose newest snapshot `--keep-daily` "
            "already kept and goes on to older weeks; restic and strongroom count that week)"
        )
    return warning


def notes(tools: list[lb.Tool], name: str, step: str) -> str:
    t = next((t for t in tools if t.name == name), None)
    if t is None:
        return "not requested"
    if not t.exe:
        return "unavailable"
    raw = t.results.get(step)
    if raw is None or "error" in raw:
        why = (raw or {}).get("error") or t.failed or "not run"
        return f"**FAILED** {why}"
    out = []
    if lb.is_busy(raw):
        out.append(f"{lb.BUSY} other processes used {raw['background_cpu']:.0%} of the CPUs")
    if raw.get("server_rss_kib") is not None:
        out.append(
            f"peak RSS admin tool {raw['client_rss_kib'] / 1024:,.0f}, server "
            f"{raw['server_rss_kib'] / 1024:,.0f} MiB; server CPU {raw['server_cpu_s']:.1f} s"
        )
    if "parts" in raw:
        out.append("prune {prune:.2f} s + compact {compact:.2f} s".format(**raw["parts"]))
    rep = raw.get("report")
    if rep and "report" in rep:
        g = rep["report"]
        out.append(
            f"{len(rep.get('removed') or [])} snapshots removed; "
            f"{lb.fmt_mib(g['unreferenced_bytes'])} MiB unreferenced, "
            f"{lb.fmt_mib(g['reclaimed_bytes'])} MiB reclaimed: {g['deleted_packs']} packs "
            f"deleted, {g['repacked_packs']} repacked, {g['deleted_blobs']:,} blobs deleted"
        )
    return "; ".join(out)


def forget_table(tools: list[lb.Tool]) -> list[str]:
    rows = [
        "| run | time (s) | CPU (s) | peak RSS (MiB) | repo before (MiB) | repo after (MiB) "
        "| snapshots before → after | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, step, label in ROWS:
        r = result(tools, name, step)
        if r is None:
            if any(t.name == name for t in tools):
                rows.append(f"| {label} | — | — | — | — | — | — | {notes(tools, name, step)} |")
            continue
        kept = r.get("kept")
        count = f"{r.get('snapshots_before', '?')} → {len(kept) if kept is not None else '?'}"
        rows.append(
            f"| {label} | {lb.fmt_time(r['wall_s'])} | {lb.fmt_time(r['cpu_s'])} "
            f"| {r['peak_rss_kib'] / 1024:,.0f} | {lb.fmt_mib(r.get('repo_bytes_before'))} "
            f"| {lb.fmt_mib(r.get('repo_bytes'))} | {count} | {notes(tools, name, step)} |"
        )
    for step, label in (("forget", "server stopped"), ("forget-online", "server running")):
        sr = result(tools, "strongroom", step)
        for other in ("restic", "borg"):
            o = result(tools, other, "forget")
            if sr is None or o is None:
                continue
            cells = [
                lb.ratio(sr.get(k), o.get(k))
                for k in ("wall_s", "cpu_s", "peak_rss_kib", "repo_bytes_before", "repo_bytes")
            ]
            rows.append(f"| strongroom ({label}) / {other} | " + " | ".join(cells) + " | | |")
    return rows


def targets_table(tools: list[lb.Tool]) -> list[str]:
    rows = [
        "| target (strongroom vs restic) | limit | ratio | result |",
        "|---|---:|---:|---|",
    ]
    rs = result(tools, "restic", "forget")
    for step, label in (("forget", "server stopped"), ("forget-online", "server running")):
        sr = result(tools, "strongroom", step)
        what = f"forget + GC time, {label}"
        if sr is None or rs is None or not rs["wall_s"]:
            rows.append(f"| {what} | ≤ {TARGET}× | — | n/a (result missing) |")
            continue
        q = sr["wall_s"] / rs["wall_s"]
        rows.append(f"| {what} | ≤ {TARGET}× | {q:.2f}× | {'PASS' if q <= TARGET else 'MISS'} |")
    return rows


def checks_table(tools: list[lb.Tool]) -> list[str]:
    rows = ["| run | check | result | time (s) |", "|---|---|---|---:|"]
    for name, step, label in ROWS:
        r = result(tools, name, step)
        if r is None or "check" not in r:
            continue
        c = r["check"]
        verdict = c["summary"] if c["ok"] else f"**FAILED** {c['summary']}"
        wall = lb.fmt_time(c["wall_s"]) if "wall_s" in c else "—"
        rows.append(f"| {label} | `{c.get('command', '')}` | {verdict} | {wall} |")
    return rows


def history_line(tools: list[lb.Tool], days: int) -> str:
    parts = []
    for t in (t for t in tools if t.exe):
        runs = [t.results.get(f"day{d:02d}") for d in range(1, days + 1)]
        done = [r for r in runs if r and "error" not in r]
        if not done:
            continue
        first, rest = done[0]["wall_s"], sum(r["wall_s"] for r in done[1:])
        parts.append(
            f"{t.name} {first:.1f} s for day 1 + {rest:.1f} s for the other {len(done) - 1}"
        )
    return "- building the history took: " + ("; ".join(parts) or "nothing ran")


def background_line(tools: list[lb.Tool]) -> str:
    loads = [
        (r["background_cpu"], f"{name} {step}")
        for name, step, _ in ROWS
        if (r := result(tools, name, step)) and "background_cpu" in r
    ]
    if not loads:
        return "- background load: no step measured"
    worst, where = max(loads)
    line = (
        f"- background load: other processes used at most {worst:.0%} of the CPUs during a "
        f"measured step ({where})"
    )
    flagged = sum(1 for load, _ in loads if load > lb.BUSY_LIMIT)
    if flagged:
        line += (
            f"; **{lb.BUSY} {flagged} step(s) ran on a busy machine (> {lb.BUSY_LIMIT:.0%}); "
            "their times are not trustworthy, rerun on an idle machine**"
        )
    return line


def render(meta: dict[str, Any], tools: list[lb.Tool]) -> str:
    m, d, h = meta["machine"], meta["data"], meta["history"]
    kind = "Linux source tree" if meta["mode"] == "linux" else "Synthetic smoke"
    policy = meta["policy"]
    warning = kept_mismatch(tools)
    lines = [
        f"## Forget + garbage collection after {h['days']} daily snapshots: {kind}",
        "",
        f"Generated by `python bench/lifecycle_bench.py` on {meta['date']}.",
        "",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.0f} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}",
        *(f"- {t.name}: {t.version if t.exe else t.note}" for t in tools),
        f"- data: {d['description']}: {d['files']:,} regular files, {d['dirs']:,} directories, "
        f"{d['symlinks']:,} symlinks, {d['bytes'] / lb.MIB:,.0f} MiB at the end",
        f"- history: {h['days']} days, {h['first']} to {h['last']}, one snapshot a day at "
        "12:00 (`strongroom backup --time`, `restic backup --time`, `borg create --timestamp`); "
        f"before each day's backups one line is appended to a different seeded random 1% of "
        f"the regular files ({h['changed_min']:,}–{h['changed_max']:,} files a day); every tool "
        "backs up the same tree state each day",
        "- strongroom backs up over TLS to `strongroom-server` on 127.0.0.1 (user added with "
        "`strongroom-admin user add`); restic (repository v2, compression auto) and borg "
        "(`repokey-blake2`, lz4) use local repositories on the same disk, as their prune runs "
        "on the client anyway",
        f"- policy `{policy}` for everyone: strongroom `strongroom-admin user set bench {policy}` "
        f"then `strongroom-admin forget bench --json` (no user key), restic "
        f"`restic forget {policy} --prune`, borg `borg prune {policy}` then `borg compact` "
        "(one step: times and CPU added, peak RSS = the larger)",
        "- strongroom is measured twice on identical copies of the server's data folder: with "
        "the server stopped, `strongroom-admin` runs the server's retention + GC code in its own "
        "process (time, CPU and RSS of that process alone); with the server running, the "
        "request goes through the admin socket and the server does the work (RSS = admin tool "
        "+ server sampled together every "
        f"{nb.SAMPLE_INTERVAL} s, CPU = admin tool + the server's CPU over the step)",
        "- time = wall clock; CPU = user+sys; peak RSS = the high-water mark (`VmHWM`) of each "
        f"process of the step, read every {nb.SAMPLE_INTERVAL} s and summed, not `wait4`'s "
        "ru_maxrss (Linux keeps the maximum across exec, so that figure is never below the "
        "harness's own RSS when it forked); repo = sum of file sizes of the repository "
        "(strongroom: the server's `DATA/storage`); `sync` runs before every measured step",
        history_line(tools, h["days"]),
        background_line(tools),
        "",
        "### Forget + GC",
        "",
        *forget_table(tools),
        "",
    ]
    if warning:
        lines += [f"**Warning: {warning}.**", ""]
    else:
        kept = next(
            (r["kept"] for n, s, _ in ROWS if (r := result(tools, n, s)) and r.get("kept")), []
        )
        lines += [f"Every tool kept the same {len(kept)} snapshots: {', '.join(kept)}.", ""]
    lines += [
        "### Target",
        "",
        *targets_table(tools),
        "",
        "### Checks after the forget",
        "",
        *checks_table(tools),
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    small_out = lb.RESULTS_DIR / "lifecycle-small-bench.md"
    p = lb.arg_parser(__doc__.split("\n\n")[0], small_out)
    p.add_argument("--days", type=int, default=30, help="daily snapshots to build (default 30)")
    p.add_argument("--keep-daily", type=int, default=7, metavar="N", help="(default 7)")
    p.add_argument("--keep-weekly", type=int, default=4, metavar="N", help="(default 4)")
    args = p.parse_args(argv)
    lb.check_args(p, args, small_out)
    problems = [
        "--days must be at least 1" if args.days < 1 else "",
        "--keep-daily and --keep-weekly must be >= 0, and not both 0"
        if min(args.keep_daily, args.keep_weekly) < 0 or args.keep_daily + args.keep_weekly == 0
        else "",
    ]
    for problem in filter(None, problems):
        p.error(problem)
    return args


def mode_of(args: argparse.Namespace) -> str:
    return "small" if args.small else "linux"


def bench(args: argparse.Namespace) -> int:
    mode = mode_of(args)
    tools = find_tools(args.tools)
    work = (args.work / f"lifecycle-{mode}").resolve()
    src, description, files, logs = lb.prepare_run(args, work, tools)
    with ExitStack() as stack:
        changed = build_history(tools, src, files, logs, args, stack)
    index = lb.index_tree(src)
    if not args.keep:
        shutil.rmtree(src.parent, ignore_errors=True)
    run_lifecycle(tools, logs, args)

    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode,
        "machine": lb.machine_info(),
        "data": lb.data_info(description, files, index, []),
        "history": {
            "days": args.days,
            "first": f"{day_time(1):%Y-%m-%d}",
            "last": f"{day_time(args.days):%Y-%m-%d}",
            "changed_per_day": changed,
            "changed_min": min(changed),
            "changed_max": max(changed),
        },
        "policy": " ".join(keep_options(args)),
    }
    section = render(meta, tools)
    print("\n" + section)
    lb.write_markdown(args.out, section, START, END)
    raw = lb.write_raw_json(f"lifecycle-{mode}", meta, tools)
    print(f"wrote {args.out} (section between lifecycle-bench markers) and {raw}")
    return report_failures(tools, logs)


def report_failures(tools: list[lb.Tool], logs: Path) -> int:
    status = lb.report_failures(tools, logs, False)
    bad = [
        f"{name} ({step})"
        for name, step, _ in ROWS
        if (r := result(tools, name, step)) and not r.get("check", {}).get("ok", False)
    ]
    missing = [
        f"{name} ({step})"
        for name, step, _ in ROWS
        if any(t.name == name and t.exe for t in tools) and result(tools, name, step) is None
    ]
    if bad:
        print(f"!!! check after the forget FAILED: {', '.join(bad)}")
    if missing:
        print(f"!!! no forget result: {', '.join(missing)} (see logs in {logs})")
    warning = kept_mismatch(tools)
    if warning:
        print(f"warning: {warning}")
    return 1 if status or bad or missing else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return lb.run_locked(args, f"lifecycle-{mode_of(args)}", bench)


if __name__ == "__main__":
    raise SystemExit(main())
