#!/usr/bin/env python3
"""Benchmark strongroom against restic and borg over the network, on loopback.

The same data and steps as linux_bench.py, but every tool talks to a server on 127.0.0.1:
strongroom to strongroom-server (TLS), restic to `rclone serve restic` (REST, plain HTTP) and
borg to `borg serve` (reached through BORG_RSH, a local pipe). Peak RSS and CPU count the
client's processes and the server's together.

Second part: N strongroom clients back up N different trees into one server at once; every
user's repository must then pass `strongroom check --read-data`. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import linux_bench as lb

START, END = "<!-- network-bench:start -->", "<!-- network-bench:end -->"
ADMIN_PASSWORD = "strongroom-bench-admin-set"  # replaced by the client before the first backup
TARGETS = tuple(t for t in lb.TARGETS if t[1] in ("first", "unchanged", "changed", "restore"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL = 0.1
BORG_SERVE_MARK = b"\0serve\0--restrict-to-path\0"  # in /proc/PID/cmdline of our borg serve
STRONGROOM_READY = re.compile(
    r"listening on (127\.0\.0\.1:\d+).*?certificate fingerprint: (SHA256:[0-9a-f]+)", re.S
)
RCLONE_READY = re.compile(r"Serving restic REST API on http://(127\.0\.0\.1:\d+)/")


# ----------------------------------------------------------------------------- servers


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    address: str  # 127.0.0.1:PORT
    fingerprint: str = ""

    @property
    def pgid(self) -> int:
        return self.proc.pid  # started in its own session

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL it if it is still there after 20 s."""
        if self.proc.poll() is None:
            os.killpg(self.pgid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.pgid, signal.SIGKILL)
                self.proc.wait()


def start_server(
    argv: list[str], env: dict[str, str], log: Path, ready: re.Pattern[str], stack: ExitStack
) -> Server:
    """Start argv in its own session, wait until its output matches ready; stopped by stack."""
    with open(f"{log}.out", "wb") as out, open(f"{log}.err", "wb") as err:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    server = Server(proc, "")
    stack.callback(server.stop)
    deadline = time.monotonic() + 60
    while True:
        text = "".join(Path(f"{log}.{s}").read_text(errors="replace") for s in ("out", "err"))
        m = ready.search(text)
        if m:
            server.address = m.group(1)
            server.fingerprint = m.group(2) if ready.groups > 1 else ""
            return server
        if proc.poll() is not None:
            raise lb.BenchError(
                f"{Path(argv[0]).name} exited ({proc.returncode}): {lb.tail(Path(f'{log}.err'))}"
            )
        if time.monotonic() > deadline:
            raise lb.BenchError(f"{Path(argv[0]).name} did not announce its address in 60 s")
        time.sleep(0.1)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class JointRssSampler(lb.GroupRssSampler):
    """Summed RSS of client process groups and of a server, sampled together.

    The server is either a process group of its own (strongroom-server, rclone), whose CPU
    during the sampling goes to extra_cpu_s, or processes inside a client group whose cmdline
    holds serve_mark (borg serve, a child of the borg client: its CPU is in the client's wait4).
    """

    def __init__(
        self,
        client_pgids: set[int],
        server_pgid: int | None = None,
        serve_mark: bytes | None = None,
    ) -> None:
        super().__init__(-1, SAMPLE_INTERVAL)
        self.client_pgids, self.server_pgid, self.serve_mark = client_pgids, server_pgid, serve_mark
        self.client_peak_kib = self.server_peak_kib = 0
        self._ticks0 = self._server_ticks()

    def _server_ticks(self) -> int:
        if self.server_pgid is None:
            return 0
        return sum(p.cpu_ticks for p in lb.process_table() if p.pgid == self.server_pgid)

    def sample(self) -> None:
        client = server = 0
        for p in lb.process_table():
            if p.pgid == self.server_pgid:
                server += p.rss_kib
            elif p.pgid in self.client_pgids:
                if self.serve_mark and self.serve_mark in cmdline(p.pid):
                    server += p.rss_kib
                else:
                    client += p.rss_kib
        self.client_peak_kib = max(self.client_peak_kib, client)
        self.server_peak_kib = max(self.server_peak_kib, server)
        self.peak_kib = max(self.peak_kib, client + server)

    def stop(self) -> None:
        super().stop()
        self.sample()  # a step shorter than the interval still gets one sample
        self.extra_cpu_s = (self._server_ticks() - self._ticks0) / CLK_TCK

    def figures(self) -> dict[str, Any]:
        return {
            "client_rss_kib": self.client_peak_kib,
            "server_rss_kib": self.server_peak_kib,
            "server_cpu_s": self.extra_cpu_s if self.server_pgid is not None else None,
        }


# ----------------------------------------------------------------------------- tools


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """Drop inherited STRONGROOM_* settings (KDF, repo, ...): the client gets only ours."""
    return {k: v for k, v in env.items() if not k.startswith("STRONGROOM_")}


@dataclass
class NetTool(lb.Tool):
    """A tool whose repository sits behind a server on loopback."""

    server: Server | None = None
    transport: str = ""
    _sampler: JointRssSampler | None = field(default=None, repr=False)

    @property
    def repo(self) -> Path:
        """What is measured as the repository: the server's storage."""
        if self.name == "strongroom":
            return self.data_dir / "storage"
        return self.base / "repo"

    @property
    def data_dir(self) -> Path:
        return self.base / "server-data"

    @property
    def url(self) -> str:
        if self.name == "restic":
            assert self.server
            return f"rest:http://{self.server.address}/"
        return f"ssh://bench@localhost{self.repo}"  # borg; the host part is ignored

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.name == "borg":
            env["BORG_RSH"] = str(self.base / "borg-rsh")
        if self.name == "strongroom":
            env = strongroom_env(clean_env(env), self.server, "bench", self.home)
        return env

    def start(self, stack: ExitStack, logs: Path) -> None:
        """Start this tool's server (borg: write the BORG_RSH script)."""
        assert self.exe
        server_env = {**super().env(), "HOME": str(self.base / "server-home")}
        if self.name == "strongroom":
            self.server = start_strongroom_server(self.exe, self.data_dir, logs, stack)
            self.transport = "strongroom-server, TLS"
        elif self.name == "restic":
            rclone = shutil.which("rclone")
            assert rclone
            self.repo.mkdir(parents=True)
            argv = [rclone, "serve", "restic", "--addr", "127.0.0.1:0", str(self.repo)]
            log = logs / "rclone-server"
            self.server = start_server(argv, server_env, log, RCLONE_READY, stack)
            self.transport = f"`rclone serve restic` ({rclone_version()}), plain HTTP, no auth"
        else:
            rsh = self.base / "borg-rsh"
            rsh.write_text(
                "#!/bin/sh\n# network_bench.py: ignore the ssh arguments, serve one repository\n"
                f"exec {shlex.quote(self.exe)} serve --restrict-to-path "
                f"{shlex.quote(str(self.repo))}\n"
            )
            rsh.chmod(0o755)
            self.transport = "`borg serve` via BORG_RSH (a local pipe: no ssh, no encryption)"

    def initialise(self, logs: Path, args: argparse.Namespace) -> None:
        if self.name != "strongroom":
            super().initialise(logs, args)
            return
        if self.failed:
            return
        assert self.exe and self.server
        try:
            add_user(self.exe, self.data_dir, self.server, "bench", self.home)
        except lb.BenchError as exc:
            self.failed = f"account setup failed: {exc}"
            self.results["init"] = {"error": self.failed}
            print(f"  strongroom account setup FAILED: {exc}")

    def init_argv(self) -> list[str]:
        assert self.exe
        if self.name == "restic":
            return [self.exe, "-r", self.url, "init"]
        return [self.exe, "init", "--encryption=repokey-blake2", self.url]

    def backup_argv(self, src: Path, n: int) -> list[str]:
        assert self.exe
        return {
            "restic": [self.exe, "-r", self.url, "backup", "-q", str(src)],
            "borg": [self.exe, "create", f"{self.url}::snap{n}", str(src)],
            "strongroom": [self.exe, "backup", str(src), "--json"],
        }[self.name]

    def restore_argv(self, target: Path, n: int) -> list[str]:
        assert self.exe
        return {
            "restic": [self.exe, "-r", self.url, "restore", "latest", "--target", str(target)],
            "borg": [self.exe, "extract", f"{self.url}::snap{n}"],  # run with cwd=target
            "strongroom": [self.exe, "restore", "latest", "--target", str(target)],
        }[self.name]

    def rss_sampler(self, pid: int) -> lb.GroupRssSampler:
        if self.name == "borg":
            self._sampler = JointRssSampler({pid}, serve_mark=BORG_SERVE_MARK)
        else:
            assert self.server
            self._sampler = JointRssSampler({pid}, server_pgid=self.server.pgid)
        return self._sampler

    def step_extras(self) -> dict[str, Any]:
        return self._sampler.figures() if self._sampler else {}


def strongroom_env(
    base: dict[str, str], server: Server | None, user: str, home: Path
) -> dict[str, str]:
    assert server
    return {
        **base,
        "HOME": str(home),
        "STRONGROOM_SERVER": server.address,
        "STRONGROOM_USER": user,
        "STRONGROOM_FINGERPRINT": server.fingerprint,
        "STRONGROOM_PASSWORD": lb.PASSWORD,
        "STRONGROOM_CONFIG_DIR": str(home / "config"),
        "STRONGROOM_CACHE_DIR": str(home / "cache"),
    }


def sibling(exe: str, name: str) -> str:
    """strongroom-server / strongroom-admin next to the strongroom client, else on PATH."""
    beside = Path(exe).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise lb.BenchError(f"{name} not found next to {exe} nor on PATH")
    return found


def start_strongroom_server(exe: str, data_dir: Path, logs: Path, stack: ExitStack) -> Server:
    argv = [sibling(exe, "strongroom-server"), "--host", "127.0.0.1", "--port", "0"]
    argv += ["--data-dir", str(data_dir)]
    env = clean_env(dict(os.environ))
    return start_server(
        argv, env, logs / f"strongroom-server-{data_dir.parent.name}", STRONGROOM_READY, stack
    )


def add_user(exe: str, data_dir: Path, server: Server, user: str, home: Path) -> None:
    """strongroom-admin adds the user; the client then replaces the admin-set password."""
    env = clean_env(dict(os.environ))
    admin = [sibling(exe, "strongroom-admin"), "--data-dir", str(data_dir)]
    lb.run_quiet([*admin, "user", "add", user, "--password-stdin"], env=env, stdin=ADMIN_PASSWORD)
    home.mkdir(parents=True, exist_ok=True)
    new_pw = home / "new-password"
    new_pw.write_text(lb.PASSWORD + "\n")
    client_env = strongroom_env(env, server, user, home) | {"STRONGROOM_PASSWORD": ADMIN_PASSWORD}
    argv = [exe, "passwd", "--server", server.address, "--user", user]
    argv += ["--fingerprint", server.fingerprint, "--new-password-file", str(new_pw)]
    lb.run_quiet(argv, env=client_env)
    new_pw.unlink()


def rclone_version() -> str:
    try:
        return lb.run_quiet(["rclone", "version"]).splitlines()[0].strip()
    except (lb.BenchError, IndexError):
        return "rclone (version unknown)"


def find_net_tools(names: list[str]) -> list[NetTool]:
    tools = []
    for t in lb.find_tools(names):
        tool = NetTool(t.name, t.exe, version=t.version, note=t.note)
        if tool.name == "restic" and tool.exe and shutil.which("rclone") is None:
            tool.exe, tool.note = None, "restic: rclone not installed (needed for its server)"
            print(f"note: {tool.note}; restic is reported as unavailable")
        tools.append(tool)
    return tools


# ----------------------------------------------------------------------------- N clients


def split_tree(src: Path, n: int) -> list[list[str]]:
    """Split src into n groups of top-level entries of about equal weight (bytes + 4 KiB a file).

    A folder heavier than a quarter of a group is replaced by its entries (recursively), so
    drivers/ and arch/ are spread over several groups; groups are filled largest first."""
    index = lb.index_tree(src)
    weight: dict[str, int] = {}
    children: dict[str, list[str]] = {}
    for rel, e in index.items():
        parent = os.path.dirname(rel)
        children.setdefault(parent, []).append(rel)
        w = e.size + 4096 if e.kind == "f" else 0
        while True:
            weight[rel] = weight.get(rel, 0) + w
            if not rel:
                break
            rel = os.path.dirname(rel)
    limit = weight[""] / n / 4
    units, todo = [], list(children[""])
    while todo:
        rel = todo.pop()
        if weight.get(rel, 0) > limit and children.get(rel):
            todo += children[rel]
        else:
            units.append(rel)
    groups: list[list[str]] = [[] for _ in range(n)]
    loads = [0] * n
    for rel in sorted(units, key=lambda r: (-weight.get(r, 0), r)):
        k = loads.index(min(loads))
        groups[k].append(rel)
        loads[k] += weight.get(rel, 0)
    return [sorted(g) for g in groups]


def build_trees(src: Path, groups: list[list[str]], root: Path) -> list[Path]:
    """root/clientK/<same relative paths>, hard-linked from src (copied if that fails)."""
    trees = []
    for k, group in enumerate(groups, 1):
        tree = root / f"client{k}" / src.name
        tree.mkdir(parents=True)
        if group:
            try:
                lb.run_quiet(["cp", "-al", "--parents", *group, str(tree)], cwd=src, timeout=3600)
            except lb.BenchError:
                lb.run_quiet(["cp", "-a", "--parents", *group, str(tree)], cwd=src, timeout=3600)
        trees.append(tree)
    return trees


def parallel_clients(
    exe: str, src: Path, work: Path, logs: Path, args: argparse.Namespace
) -> dict[str, Any]:
    n = args.parallel_clients
    base = work / "parallel"
    print(f"part 2: {n} strongroom clients back up {n} different trees into one server at once")
    trees = build_trees(src, split_tree(src, n), base / "trees")
    sizes = []
    for tree in trees:
        entries = lb.index_tree(tree).values()
        files = [e for e in entries if e.kind == "f"]
        sizes.append({"files": len(files), "bytes": sum(e.size for e in files)})
    users = [f"bench{k}" for k in range(1, n + 1)]
    homes = [base / "clients" / u for u in users]
    result: dict[str, Any] = {"clients": n, "trees": sizes, "per_client": []}
    with ExitStack() as stack:
        data_dir = base / "server-data"
        server = start_strongroom_server(exe, data_dir, logs, stack)
        for user, home in zip(users, homes, strict=True):
            add_user(exe, data_dir, server, user, home)
        envs = [
            strongroom_env(clean_env(dict(os.environ)), server, u, h)
            for u, h in zip(users, homes, strict=True)
        ]
        if args.wait_idle > 0 and not lb.wait_for_idle(args.wait_idle):
            print("  (still busy after --wait-idle, measuring anyway)")
        joint = JointRssSampler(set(), server_pgid=server.pgid)

        def sampler(pid: int) -> lb.GroupRssSampler:
            joint.client_pgids.add(pid)
            return lb.GroupRssSampler(pid, SAMPLE_INTERVAL)

        measured: list[lb.Measured | None] = [None] * n

        def run(k: int) -> None:
            argv = [exe, "backup", str(trees[k]), "--json"]
            log = logs / f"parallel-{users[k]}-backup"
            measured[k] = lb.run_measured(argv, envs[k], log, args.timeout, sampler=sampler)

        os.sync()
        threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
        busy0 = lb.busy_cpu_seconds()
        t0 = time.monotonic()
        joint.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        joint.stop()
        busy = lb.busy_cpu_seconds() - busy0
        ncpu = len(os.sched_getaffinity(0))
        client_cpu = sum(m.cpu_s for m in measured if m)
        result.update(
            wall_s=wall,
            bytes=sum(s["bytes"] for s in sizes),
            files=sum(s["files"] for s in sizes),
            client_cpu_s=client_cpu,
            server_cpu_s=joint.extra_cpu_s,
            server_rss_kib=joint.server_peak_kib,
            clients_rss_kib=joint.client_peak_kib,
            total_rss_kib=joint.peak_kib,
            background_cpu=max(0.0, busy - client_cpu - joint.extra_cpu_s) / (wall * ncpu),
            storage_bytes=lb.disk_bytes(data_dir / "storage"),
        )
        print(f"  all {n} done in {wall:.2f} s; checking every repository (--read-data) ...")
        for k, m in enumerate(measured):
            assert m is not None
            log = logs / f"parallel-{users[k]}-backup"
            row: dict[str, Any] = {"user": users[k], **asdict(m), **sizes[k]}
            row.pop("background_cpu")
            row["stats"] = lb.parse_json_line(Path(f"{log}.out").read_text(errors="replace"))
            if m.rc != 0:
                row["error"] = f"backup exit {m.rc}: {lb.tail(Path(f'{log}.err'))}"
            check_log = logs / f"parallel-{users[k]}-check"
            argv = [exe, "check", "--read-data"]
            c = lb.run_measured(argv, envs[k], check_log, args.timeout)
            row["check"] = {
                "rc": c.rc,
                "wall_s": c.wall_s,
                "output": lb.tail(Path(f"{check_log}.out"), 3),
                "error": lb.tail(Path(f"{check_log}.err"), 3) if c.rc else "",
            }
            ok = c.rc == 0 and m.rc == 0
            state = "ok" if ok else "!!! FAILED"
            print(
                f"  {users[k]}: backup {m.wall_s:.2f} s (exit {m.rc}), check {state}: "
                f"{row['check']['output'] or row['check']['error']}"
            )
            result["per_client"].append(row)
    if not args.keep:
        shutil.rmtree(base / "trees", ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- report


def step_notes(t: lb.Tool, step: str) -> str:
    notes = lb.step_notes(t, step)
    r = t.results.get(step)
    if not r or "error" in r or "server_rss_kib" not in r:
        return notes
    rss = (r["client_rss_kib"] / 1024, r["server_rss_kib"] / 1024)
    split = "peak RSS client {:,.0f}, server {:,.0f}".format(*rss)
    if r.get("server_cpu_s") is not None:
        split += f"; server CPU {r['server_cpu_s']:.1f} s"
    return f"{split}; {notes}" if notes else split


def render_compare(meta: dict[str, Any], tools: list[NetTool]) -> list[str]:
    d = meta["data"]
    lines = [
        *(
            f"- {t.name}: {t.version}, server: {t.transport}" if t.exe else f"- {t.name}: {t.note}"
            for t in tools
        ),
        f"- data: {d['description']}: {d['files']:,} regular files, {d['dirs']:,} directories, "
        f"{d['symlinks']:,} symlinks, {d['bytes'] / lb.MIB:,.0f} MiB; step (c) appends one line "
        f"to every 100th regular file in sorted order ({d['modified']:,} files)",
        "- every server listens on 127.0.0.1 and keeps its repository on the same disk as the "
        "client; restic repository format v2 (compression auto), borg "
        "`--encryption=repokey-blake2` with lz4; strongroom with its default KDF (Argon2id "
        "64 MiB, 3 passes)",
        "- **transport: only strongroom encrypts it (TLS, certificate pinned by fingerprint); "
        "restic's REST backend is plain HTTP and borg's `serve` runs over a local pipe instead "
        "of ssh**, so restic and borg pay for neither TLS nor ssh here (all three encrypt the "
        "data itself on the client)",
        "- time = wall clock; CPU = user+sys of the client and the server; peak RSS = client "
        f"process group plus server processes, sampled together every {SAMPLE_INTERVAL} s "
        "(max with the client's `wait4` ru_maxrss); the notes split it into client and server "
        "peaks (MiB); repo = the server's storage (strongroom: `DATA/storage`, restic: rclone's "
        "folder, borg: the repository); client cache = the client's isolated HOME/config/cache",
        "- phases as in the local benchmark: all tools (a)+(b), modify once, all tools (c), "
        "all tools (d), restores verified against the source; the three servers run "
        "throughout (idle while another tool is measured)",
        lb.background_line(tools),
        "",
    ]
    for step, title in lb.STEPS.items():
        lines += [f"### {title}", "", lb.step_table(tools, step, notes=step_notes), ""]
    lines += ["### Targets", "", lb.targets_table(tools, TARGETS), ""]
    return lines


def render_parallel(p: dict[str, Any], tools: list[NetTool], data_bytes: int) -> list[str]:
    n = p["clients"]
    mib_s = p["bytes"] / lb.MIB / p["wall_s"]
    lines = [
        f"### {n} strongroom clients at once into one server",
        "",
        f"- {n} users, one `strongroom backup` each, all started together; each backs up a "
        f"different part of the tree (top-level entries, folders heavier than 1/{4 * n} of the "
        f"tree split further, groups balanced by bytes + 4 KiB a file, hard-linked copies): "
        f"{p['files']:,} files, {p['bytes'] / lb.MIB:,.0f} MiB in all",
        f"- total wall time **{p['wall_s']:.1f} s**, aggregate **{mib_s:,.1f} MiB/s**"
        + single_client_rate(tools, data_bytes),
        f"- server peak RSS **{p['server_rss_kib'] / 1024:,.0f} MiB**; all clients + server "
        f"together {p['total_rss_kib'] / 1024:,.0f} MiB (sampled every {SAMPLE_INTERVAL} s); "
        f"CPU: clients {p['client_cpu_s']:.1f} s, server {p['server_cpu_s']:.1f} s; server "
        f"storage {p['storage_bytes'] / lb.MIB:,.1f} MiB",
        f"- background load: other processes used {p['background_cpu']:.0%} of the CPUs"
        + (f" **{lb.BUSY} not trustworthy**" if p["background_cpu"] > lb.BUSY_LIMIT else ""),
        "",
        "| user | files | MiB | time (s) | CPU (s) | peak RSS (MiB) | uploaded (MiB) "
        "| `check --read-data` |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in p["per_client"]:
        stats = row.get("stats") or {}
        up = stats.get("bytes_uploaded")
        check = row["check"]
        verdict = check["output"] if check["rc"] == 0 else f"**FAILED** {check['error']}"
        if "error" in row:
            verdict = f"**backup FAILED** {row['error']}; {verdict}"
        lines.append(
            f"| {row['user']} | {row['files']:,} | {row['bytes'] / lb.MIB:,.1f} "
            f"| {lb.fmt_time(row['wall_s'])} | {lb.fmt_time(row['cpu_s'])} "
            f"| {row['peak_rss_kib'] / 1024:,.0f} | {lb.fmt_mib(up)} | {verdict} |"
        )
    return [*lines, ""]


def single_client_rate(tools: list[NetTool], data_bytes: int) -> str:
    sr = next((t for t in tools if t.name == "strongroom"), None)
    wall = lb.metric(sr, "first", "wall_s") if sr else None
    if not wall:
        return ""
    return f" (one client, step (a) above: {data_bytes / lb.MIB / wall:,.1f} MiB/s)"


def render(meta: dict[str, Any], tools: list[NetTool], parallel: dict[str, Any] | None) -> str:
    m = meta["machine"]
    kind = "Synthetic smoke" if meta["mode"].startswith("small") else "Linux source tree"
    lines = [
        f"## Network benchmark on loopback: {kind}{', busy machine' if meta.get('busy') else ''}",
        "",
        f"Generated by `python bench/network_bench.py` on {meta['date']}.",
        "",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.0f} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}",
        *lb.load_note(meta),
    ]
    if any(t.results for t in tools):
        lines += render_compare(meta, tools)
    if parallel:
        if not any(t.results for t in tools):
            d = meta["data"]
            lines += [f"- data: {d['description']}", ""]
        lines += render_parallel(parallel, tools, meta["data"]["bytes"])
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    small_out = lb.RESULTS_DIR / "network-small-bench.md"
    p = lb.arg_parser(__doc__.split("\n\n")[0], small_out)
    p.add_argument(
        "--parallel-clients",
        type=int,
        default=8,
        metavar="N",
        help="clients (and users, and trees) in the concurrent part (default 8)",
    )
    p.add_argument(
        "--only",
        choices=("compare", "parallel", "all"),
        default="all",
        help="compare = steps (a)-(d) for each tool; parallel = N strongroom clients at once",
    )
    args = p.parse_args(argv)
    lb.check_args(p, args, small_out)
    if args.parallel_clients < 1:
        p.error("--parallel-clients must be at least 1")
    return args


def bench(args: argparse.Namespace) -> int:
    if args.busy:
        lb.LOAD = lb.CpuLoad()
    try:
        return _bench(args)
    finally:
        if lb.LOAD is not None:
            lb.LOAD.stop()
            lb.LOAD = None


def _bench(args: argparse.Namespace) -> int:
    mode = ("small" if args.small else "linux") + lb.busy_suffix(args)
    work = (args.work / f"network-{mode}").resolve()
    tools = find_net_tools(args.tools)
    sr = next((t for t in tools if t.name == "strongroom" and t.exe), None)
    do_parallel = args.only in ("parallel", "all")
    if do_parallel and sr is None:
        if args.only == "parallel":
            raise lb.BenchError("--only parallel needs strongroom")
        print("note: strongroom unavailable; skipping the concurrent-clients part")
        do_parallel = False
    src, description, files, logs = lb.prepare_run(args, work, tools)
    index, modified, mismatch = lb.index_tree(src), [], False
    parallel: dict[str, Any] | None = None
    with ExitStack() as stack:
        if args.only in ("compare", "all"):
            for t in (t for t in tools if t.exe):
                try:
                    t.start(stack, logs)
                except lb.BenchError as exc:
                    t.failed = f"server did not start: {exc}"
                    t.results["init"] = {"error": t.failed}
                    print(f"  {t.name}: {t.failed}")
            index, modified, mismatch = lb.run_phases(tools, src, files, logs, args)
    if do_parallel:
        assert sr and sr.exe
        parallel = parallel_clients(sr.exe, src, work, logs, args)
    if not args.keep:
        shutil.rmtree(src.parent, ignore_errors=True)

    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode,
        "busy": args.busy,
        "machine": lb.machine_info(),
        "data": lb.data_info(description, files, index, modified),
        "parallel": parallel,
    }
    section = render(meta, tools, parallel)
    print("\n" + section)
    lb.write_markdown(args.out, section, *lb.markers("network-bench", args))
    raw = lb.write_raw_json(f"network-{mode}", meta, list(tools))
    start = lb.markers("network-bench", args)[0]
    print(f"wrote {args.out} (the section after {start}) and {raw}")
    status = lb.report_failures(list(tools), logs, mismatch)
    bad = [
        r["user"]
        for r in (parallel or {}).get("per_client", [])
        if r["check"]["rc"] or "error" in r
    ]
    if bad:
        print(f"!!! concurrent clients: backup or check --read-data FAILED for {', '.join(bad)}")
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = ("small" if args.small else "linux") + lb.busy_suffix(args)
    return lb.run_locked(args, f"network-{mode}", bench)


if __name__ == "__main__":
    raise SystemExit(main())
