#!/usr/bin/env python3
"""Benchmark the scaled-out deployment: strongroom-server nodes on PostgreSQL + S3 (radosgw).

The Linux source tree, on loopback, through four deployments in one run:

- embedded: one strongroom-server on a data folder (SQLite + local packs), the default;
- scale-out, 1 node: one node on PostgreSQL 15 + a Ceph radosgw bucket;
- scale-out, 2 nodes: two nodes on one database and bucket, the client alternating between
  them (first backup through node A; the unchanged backup, the restore and GC through node B);
- restic with its S3 backend against the same radosgw (a bucket of its own).

Steps: (a) first backup, (b) unchanged backup, (c) restore (verified against the source;
the median of 3 rounds, interleaved across the deployments),
(d) GC: a backup of the tree without drivers/ and arch/, the two full snapshots forgotten,
then `strongroom-admin gc` (restic: `forget --prune`). Then 8 clients back up 8 different
parts of the tree at once: into the embedded server, into one node, into two nodes (4 each),
and every account passes `check --read-data`. PostgreSQL and radosgw are started here with
the test fixtures (tests/pgfixtures.py, tests/s3fixtures.py) and removed at the end.

    .venv/bin/python bench/scaleout_bench.py --skip-download [--small]

The report goes into docs/BENCHMARKS.md between <!-- scaleout-bench:start/end --> markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import linux_bench as lb  # noqa: E402
import network_bench as nb  # noqa: E402
from pgfixtures import PgCluster  # noqa: E402
from s3fixtures import CephS3, empty_bucket  # noqa: E402

MEMSTORE = 10 * 1024**3  # radosgw's RAM-backed OSD; buckets are emptied after each part
CLK_TCK = os.sysconf("SC_CLK_TCK")
GC_EXCLUDES = ("drivers", "arch")
COMPONENTS = {  # /proc/PID/comm -> what the report calls it
    "strongroom": "client",
    "restic": "client",
    "strongroom-serv": "node(s)",
    "postgres": "PostgreSQL",
    "radosgw": "radosgw",
    "ceph-osd": "ceph-osd",
    "ceph-mon": "ceph-mon",
}


# ----------------------------------------------------------------------------- CPU by component


class ComponentCpu(threading.Thread):
    """CPU seconds per component during a step: every process sampled each 0.2 s by its
    command name; a process that exits between samples loses at most 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.first: dict[int, tuple[str, int]] = {}
        self.last: dict[int, int] = {}
        self._stop_event = threading.Event()
        self._began = False  # after the first sample, new processes count from zero

    def _sample(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])
            pid = int(entry.name)
            if pid not in self.first:  # born during the step: counts from zero
                self.first[pid] = (comm, 0 if self._began else ticks)
            self.last[pid] = ticks

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            self._sample()

    def begin(self) -> None:
        self._sample()  # what exists now counts from now
        self._began = True
        self.start()

    def end(self) -> dict[str, float]:
        self._stop_event.set()
        self.join()
        self._sample()
        out: dict[str, float] = defaultdict(float)
        for pid, (comm, t0) in self.first.items():
            name = COMPONENTS.get(comm)
            if name is not None:
                out[name] += (self.last[pid] - t0) / CLK_TCK
        return dict(out)


# ----------------------------------------------------------------------------- deployments


@dataclass
class Deployment:
    name: str
    env: dict[str, str]  # for the server nodes and the admin tool
    admin_args: list[str]
    nodes: list[nb.Server] = field(default_factory=list)
    storage: Path | None = None  # embedded: the packs folder, for its size
    bucket: str = ""
    database: str = ""


@dataclass
class Infra:
    pg: PgCluster
    ceph: CephS3
    work: Path

    def scaleout(
        self, name: str, n_nodes: int, exe: str, logs: Path, stack: ExitStack
    ) -> Deployment:
        database = self.pg.create_database("bench")
        s3 = self.ceph.client()
        bucket = self.ceph.new_bucket(s3, "bench")
        secret = self.work / f"{name}-pg-password"
        secret.write_text(self.pg.password + "\n")
        secret.chmod(0o600)
        dsn = self.pg.dsn_for(database).replace(f":{self.pg.password}@", "@")
        env = {
            **nb.clean_env(dict(os.environ)),
            "STRONGROOM_METADATA": dsn,
            "STRONGROOM_BLOBS": f"s3://{bucket}?endpoint={self.ceph.endpoint}"
            f"&region={self.ceph.region}",
            "STRONGROOM_METADATA_PASSWORD_FILE": str(secret),
            "AWS_ACCESS_KEY_ID": self.ceph.access_key,
            "AWS_SECRET_ACCESS_KEY": self.ceph.secret_key,
        }
        dep = Deployment(name, env, [], bucket=bucket, database=database)
        for k in range(n_nodes):
            work = self.work / name / f"node{k}"
            dep.nodes.append(start_node(exe, work, env, logs / f"{name}-node{k}", stack))
        dep.admin_args = ["--data-dir", str(self.work / name / "admin")]
        return dep

    def drop(self, dep: Deployment) -> None:
        for node in dep.nodes:
            node.stop()
        if dep.bucket:
            s3 = self.ceph.client()
            empty_bucket(s3, dep.bucket)
            s3.delete_bucket(Bucket=dep.bucket)
        if dep.database:
            self.pg.drop_database(dep.database)


def start_node(exe: str, work: Path, env: dict[str, str], log: Path, stack: ExitStack) -> nb.Server:
    argv = [nb.sibling(exe, "strongroom-server"), "--host", "127.0.0.1", "--port", "0"]
    argv += ["--data-dir", str(work), "--web-port", "0"]
    return nb.start_server(argv, env, log, nb.STRONGROOM_READY, stack)


def embedded(name: str, exe: str, work: Path, logs: Path, stack: ExitStack) -> Deployment:
    data = work / name
    env = nb.clean_env(dict(os.environ))
    dep = Deployment(name, env, ["--data-dir", str(data)], storage=data / "storage")
    dep.nodes.append(start_node(exe, data, env, logs / f"{name}-server", stack))
    return dep


DEPLOYMENTS = (
    ("embedded", "embedded", 0),
    ("scale-out, 1 node", "so1", 1),
    ("scale-out, 2 nodes", "so2", 2),
)


def deploy(
    infra: Infra, name: str, nodes: int, exe: str, logs: Path, stack: ExitStack
) -> Deployment:
    """nodes = 0: the embedded server; else that many scale-out nodes."""
    if nodes == 0:
        return embedded(name, exe, infra.work, logs, stack)
    return infra.scaleout(name, nodes, exe, logs, stack)


def add_user(exe: str, dep: Deployment, user: str, home: Path, node: nb.Server) -> None:
    admin = [nb.sibling(exe, "strongroom-admin"), *dep.admin_args]
    pw = nb.ADMIN_PASSWORD
    lb.run_quiet([*admin, "user", "add", user, "--password-stdin"], env=dep.env, stdin=pw)
    home.mkdir(parents=True, exist_ok=True)
    new_pw = home / "new-password"
    new_pw.write_text(lb.PASSWORD + "\n")
    env = client_env(node, user, home) | {"STRONGROOM_PASSWORD": pw}
    argv = [exe, "passwd", "--new-password-file", str(new_pw)]
    lb.run_quiet(argv, env=env)
    new_pw.unlink()


def client_env(node: nb.Server, user: str, home: Path) -> dict[str, str]:
    return nb.strongroom_env(nb.clean_env(dict(os.environ)), node, user, home)


# ----------------------------------------------------------------------------- steps


@dataclass
class Step:
    wall_s: float
    client_cpu_s: float
    cpu: dict[str, float]
    rc: int
    note: str = ""
    busy: float = 0.0


def measure(
    argv: list[str], env: dict[str, str], log: Path, timeout: float, cwd: Path | None = None
) -> Step:
    cpu = ComponentCpu()
    cpu.begin()
    m = lb.run_measured(argv, env, log, timeout, cwd=cwd)
    by_component = cpu.end()
    note = "" if m.rc == 0 else f"exit {m.rc}: {lb.tail(Path(f'{log}.err'))}"
    return Step(m.wall_s, m.cpu_s, by_component, m.rc, note)


def restore_root(work: Path) -> Path:
    """Restores go to tmpfs when there is one: on this VM's ext4, creating 78,000 files soon
    after as many were deleted spends 15 s in the kernel (`perf`: ext4 `recently_deleted` /
    `find_inode_bit` scanning inode tables), for whichever tool restores then; tmpfs measures
    the tools, not ext4's inode allocator."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 8 * 1024**3:
        root = shm / f"strongroom-bench-{os.getpid()}"
        root.mkdir(exist_ok=True)
        return root
    return work


class Subject:
    """One deployment under test with one user: backups, restores and GC, step by step, so
    that the restores of all deployments can be interleaved (this VM's file-creation speed
    drifts by 2-3x over minutes: a restore measured alone says more about the minute than
    about the tool)."""

    label = ""

    def __init__(self, src: Path, index: dict[str, lb.Entry], work: Path, logs: Path) -> None:
        self.src, self.index, self.work, self.logs = src, index, work, logs
        self.steps: dict[str, Step] = {}
        self.restores: list[Step] = []

    def backup_argv(self, *extra: str) -> list[str]:
        raise NotImplementedError

    def restore_argv(self, target: Path) -> list[str]:
        raise NotImplementedError

    def restored_root(self, target: Path) -> Path:
        raise NotImplementedError

    def env(self, step: str) -> dict[str, str]:
        raise NotImplementedError

    def backups(self, timeout: float) -> None:
        for step in ("first", "unchanged"):
            print(f"  {self.label}: {step} backup", flush=True)
            log = self.logs / f"{self.tag}-{step}"
            self.steps[step] = measure(self.backup_argv(), self.env(step), log, timeout)

    @property
    def tag(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label)

    def restore(self, round_no: int, timeout: float) -> None:
        target = restore_root(self.work) / f"{self.tag}-restore"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        print(f"  {self.label}: restore (round {round_no + 1})", flush=True)
        log = self.logs / f"{self.tag}-restore{round_no}"
        step = measure(self.restore_argv(target), self.env("restore"), log, timeout)
        if round_no == 0:
            check = lb.verify_restore(self.src, self.index, self.restored_root(target), [])
            step.note = check["summary"] if check["ok"] else f"**{check['summary']}**"
        self.restores.append(step)
        shutil.rmtree(target, ignore_errors=True)

    def finish_restores(self) -> None:
        """The median round stands for the step; the note gives every round."""
        times = sorted(r.wall_s for r in self.restores)
        median = sorted(self.restores, key=lambda r: r.wall_s)[len(times) // 2]
        rounds = ", ".join(f"{r.wall_s:.1f}" for r in self.restores)
        note = self.restores[0].note
        self.steps["restore"] = Step(
            median.wall_s,
            median.client_cpu_s,
            median.cpu,
            max(r.rc for r in self.restores),
            f"median of {len(times)} rounds ({rounds} s); {note}",
        )

    def gc(self, timeout: float) -> None:
        raise NotImplementedError

    def stored(self) -> int:
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError


class StrongroomSubject(Subject):
    def __init__(
        self,
        label: str,
        exe: str,
        dep: Deployment,
        infra: Infra,
        *args: Any,
    ) -> None:
        super().__init__(*args)
        self.label, self.exe, self.dep, self.infra = label, exe, dep, infra
        self.home = self.work / dep.name / "client"
        add_user(exe, dep, "bench", self.home, dep.nodes[0])

    def env(self, step: str) -> dict[str, str]:
        # Two nodes: the first backup through node A, everything after it through node B.
        node = self.dep.nodes[0] if step == "first" else self.dep.nodes[-1]
        return client_env(node, "bench", self.home)

    def backup_argv(self, *extra: str) -> list[str]:
        return [self.exe, "backup", str(self.src), "--json", *extra]

    def restore_argv(self, target: Path) -> list[str]:
        return [self.exe, "restore", "latest", "--target", str(target)]

    def restored_root(self, target: Path) -> Path:
        return target / self.src.name

    def gc(self, timeout: float) -> None:
        env = self.env("gc")
        excludes = [f"--exclude={x}" for x in GC_EXCLUDES]
        lb.run_quiet(self.backup_argv(*excludes), env=env, timeout=timeout)
        snaps = json.loads(lb.run_quiet([self.exe, "snapshots", "--json"], env=env))
        ids = [s["id"] for s in sorted(snaps, key=lambda s: s["time"])][:2]
        lb.run_quiet([self.exe, "forget", *ids], env=env)
        admin = [nb.sibling(self.exe, "strongroom-admin"), *self.dep.admin_args]
        before = self.stored()
        print(f"  {self.label}: gc", flush=True)
        step = measure(
            [*admin, "gc", "bench", "--json"], self.dep.env, self.logs / f"{self.tag}-gc", timeout
        )
        after = self.stored()
        step.note = f"{(before - after) / lb.MIB:,.0f} MiB reclaimed of {before / lb.MIB:,.0f} MiB"
        self.steps["gc"] = step

    def stored(self) -> int:
        """Embedded: the packs folder on disk; scale-out: the packs' sizes the index records."""
        if self.dep.storage is not None:
            return lb.disk_bytes(self.dep.storage)
        admin = [nb.sibling(self.exe, "strongroom-admin"), *self.dep.admin_args, "usage", "--json"]
        rows = json.loads(lb.run_quiet(admin, env=self.dep.env))
        return sum(int(r["stored_bytes"]) for r in rows)

    def drop(self) -> None:
        self.infra.drop(self.dep)


class ResticSubject(Subject):
    label = "restic (S3)"

    def __init__(self, infra: Infra, *args: Any) -> None:
        super().__init__(*args)
        exe = shutil.which("restic")
        assert exe
        self.exe, self.infra = exe, infra
        self.s3 = infra.ceph.client()
        self.bucket = infra.ceph.new_bucket(self.s3, "restic")
        home = self.work / "restic"
        home.mkdir(parents=True)
        self._env = {
            **nb.clean_env(dict(os.environ)),
            "HOME": str(home),
            "RESTIC_PASSWORD": lb.PASSWORD,
            "RESTIC_CACHE_DIR": str(home / "cache"),
            "AWS_ACCESS_KEY_ID": infra.ceph.access_key,
            "AWS_SECRET_ACCESS_KEY": infra.ceph.secret_key,
            "AWS_DEFAULT_REGION": infra.ceph.region,
        }
        endpoint = f"s3:{infra.ceph.endpoint}/{self.bucket}"
        self.repo = ["-r", endpoint, "-o", "s3.bucket-lookup=path"]
        lb.run_quiet([exe, *self.repo, "init"], env=self._env)

    def env(self, step: str) -> dict[str, str]:
        return self._env

    def backup_argv(self, *extra: str) -> list[str]:
        return [self.exe, *self.repo, "backup", "-q", str(self.src), *extra]

    def restore_argv(self, target: Path) -> list[str]:
        return [self.exe, *self.repo, "restore", "latest", "--target", str(target)]

    def restored_root(self, target: Path) -> Path:
        return target / self.src.relative_to("/")

    def gc(self, timeout: float) -> None:
        excludes = [f"--exclude={self.src / x}" for x in GC_EXCLUDES]
        lb.run_quiet(self.backup_argv(*excludes), env=self._env, timeout=timeout)
        out = lb.run_quiet([self.exe, *self.repo, "snapshots", "--json"], env=self._env)
        ids = [s["short_id"] for s in sorted(json.loads(out), key=lambda s: s["time"])][:2]
        before = self.stored()
        print(f"  {self.label}: forget --prune", flush=True)
        argv = [self.exe, *self.repo, "forget", *ids, "--prune"]
        step = measure(argv, self._env, self.logs / f"{self.tag}-gc", timeout)
        after = self.stored()
        step.note = f"{(before - after) / lb.MIB:,.0f} MiB reclaimed of {before / lb.MIB:,.0f} MiB"
        self.steps["gc"] = step

    def stored(self) -> int:
        return bucket_bytes(self.s3, self.bucket)

    def drop(self) -> None:
        empty_bucket(self.s3, self.bucket)
        self.s3.delete_bucket(Bucket=self.bucket)


def single_client(
    infra: Infra, exe: str, src: Path, index: dict[str, lb.Entry], logs: Path, args: Any
) -> dict[str, dict[str, Step]]:
    """Backups per deployment, then the restores in interleaved rounds, then GC."""
    with ExitStack() as stack:
        subjects: list[Subject] = []
        common = (src, index, infra.work, logs)
        for label, name, nodes in DEPLOYMENTS:
            dep = deploy(infra, name, nodes, exe, logs, stack)
            subjects.append(StrongroomSubject(label, exe, dep, infra, *common))
            subjects[-1].backups(args.timeout)
        subjects.append(ResticSubject(infra, *common))
        subjects[-1].backups(args.timeout)
        for round_no in range(args.restore_rounds):
            for subject in subjects:
                subject.restore(round_no, args.timeout)
        out = {}
        for subject in subjects:
            subject.finish_restores()
            subject.gc(args.timeout)
            subject.steps["storage"] = Step(0, 0, {}, 0, note=str(subject.stored()))
            subject.drop()
            out[subject.label] = subject.steps
    return out


def bucket_bytes(s3: Any, bucket: str) -> int:
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += sum(int(o["Size"]) for o in page.get("Contents", []))
    return total


# ----------------------------------------------------------------------------- 8 clients


def parallel(
    exe: str,
    dep: Deployment,
    trees: list[Path],
    work: Path,
    logs: Path,
    timeout: float,
) -> dict[str, Any]:
    n = len(trees)
    users = [f"p{k}" for k in range(1, n + 1)]
    homes = [work / dep.name / "clients" / u for u in users]
    nodes = [dep.nodes[k % len(dep.nodes)] for k in range(n)]
    for user, home, node in zip(users, homes, nodes, strict=True):
        add_user(exe, dep, user, home, node)
    results: list[Step | None] = [None] * n

    def run(k: int) -> None:
        env = client_env(nodes[k], users[k], homes[k])
        argv = [exe, "backup", str(trees[k]), "--json"]
        m = lb.run_measured(argv, env, logs / f"{dep.name}-{users[k]}", timeout)
        results[k] = Step(m.wall_s, m.cpu_s, {}, m.rc)

    print(f"  {dep.name}: {n} clients at once", flush=True)
    cpu = ComponentCpu()
    cpu.begin()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    by_component = cpu.end()
    checks = []
    for k in range(n):
        env = client_env(nodes[k], users[k], homes[k])
        c = lb.run_measured(
            [exe, "check", "--read-data"], env, logs / f"{dep.name}-{users[k]}-check", timeout
        )
        checks.append(c.rc)
    failed = [users[k] for k, r in enumerate(results) if r is None or r.rc != 0]
    return {
        "wall_s": wall,
        "cpu": by_component,
        "failed": failed,
        "checks_failed": [users[k] for k, rc in enumerate(checks) if rc != 0],
        "slowest_s": max(r.wall_s for r in results if r is not None),
    }


# ----------------------------------------------------------------------------- report


def cpu_text(cpu: dict[str, float]) -> str:
    order = ["client", "node(s)", "PostgreSQL", "radosgw", "ceph-osd", "ceph-mon"]
    return ", ".join(f"{k} {cpu[k]:.1f}" for k in order if cpu.get(k, 0) >= 0.05)


def render(
    meta: dict[str, Any], single: dict[str, dict[str, Step]], par: dict[str, dict[str, Any]]
) -> str:
    d = meta["data"]
    m = meta["machine"]
    mib = d["bytes"] / lb.MIB
    lines = [
        "## Scale-out benchmark: PostgreSQL + radosgw against embedded and restic's S3 backend",
        "",
        f"Generated by `python bench/scaleout_bench.py` on {meta['date']}.",
        "",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.0f} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}; PostgreSQL 15 (Debian) and Ceph radosgw "
        "(Debian: one monitor, one memstore OSD, radosgw) on loopback, on the same 2 cores",
        f"- data: {d['description']}: {d['files']:,} files, {mib:,.0f} MiB",
        "- embedded = one strongroom-server on a data folder; 1 node / 2 nodes = strongroom-server "
        "node(s) on PostgreSQL + a radosgw bucket (2 nodes: first backup through node A, the "
        "rest through node B); restic = restic "
        f"{meta['restic']} with its S3 backend on the same radosgw (a bucket of its own)",
        "- GC: a backup of the tree without "
        + " and ".join(f"{x}/" for x in GC_EXCLUDES)
        + ", the two full snapshots forgotten, then `strongroom-admin gc bench` (restic: "
        "`forget ID ID --prune`, which also repacks)",
        "- restore: the median of "
        f"{meta['rounds']} rounds per deployment, the rounds interleaved across deployments "
        "(this VM's file-creation speed drifts 2-3x over minutes, for every tool alike); "
        "every round goes to an empty folder on tmpfs (/dev/shm: on this VM's ext4, creating "
        "78,000 files soon after deleting as many spends ~15 s in ext4's inode allocator, "
        "`recently_deleted`, whatever the tool), the first is verified against the source",
        "- CPU (s) by component, sampled from /proc every 0.2 s: where the time goes",
        "",
        "| deployment | first backup | unchanged | restore | GC | stored (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, steps in single.items():
        cells = [
            f"{steps[s].wall_s:.1f} s" + ("" if steps[s].rc == 0 else " **failed**")
            for s in ("first", "unchanged", "restore", "gc")
        ]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {int(steps['storage'].note) / lb.MIB:,.0f} |"
        )
    base = single.get("restic (S3)")
    if base:
        lines += ["", "Ratios to restic on the same radosgw (time; < 1 is faster):", ""]
        lines += ["| deployment | first | unchanged | restore | GC |", "|---|---:|---:|---:|---:|"]
        for name, steps in single.items():
            if name == "restic (S3)":
                continue
            r = [
                f"{steps[s].wall_s / base[s].wall_s:.2f}×"
                for s in ("first", "unchanged", "restore", "gc")
            ]
            lines.append(f"| {name} | " + " | ".join(r) + " |")
    lines += ["", "Where the CPU went (seconds; client = the strongroom or restic process):", ""]
    lines += ["| deployment | step | CPU by component | notes |", "|---|---|---|---|"]
    for name, steps in single.items():
        for s in ("first", "unchanged", "restore", "gc"):
            st = steps[s]
            lines.append(f"| {name} | {s} | {cpu_text(st.cpu)} | {st.note} |")
    if par:
        n = meta["clients"]
        lines += ["", f"### {n} clients at once ({mib:,.0f} MiB in all, in {n} trees)", ""]
        lines += [
            "| deployment | wall | aggregate | slowest client | CPU by component "
            "| all `check --read-data` |",
            "|---|---:|---:|---:|---|---|",
        ]
        for name, p in par.items():
            bad = p["failed"] + p["checks_failed"]
            ok = f"**FAILED** {bad}" if bad else "ok"
            lines.append(
                f"| {name} | {p['wall_s']:.1f} s | {mib / p['wall_s']:,.1f} MiB/s "
                f"| {p['slowest_s']:.1f} s | {cpu_text(p['cpu'])} | {ok} |"
            )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    small_out = lb.RESULTS_DIR / "scaleout-small-bench.md"
    p = lb.arg_parser(__doc__.split("\n\n")[0], small_out)
    p.add_argument("--clients", type=int, default=8, help="clients in the concurrent part")
    p.add_argument("--no-parallel", action="store_true", help="skip the concurrent part")
    p.add_argument(
        "--restore-rounds", type=int, default=3, help="restores per deployment, interleaved"
    )
    args = p.parse_args(argv)
    lb.check_args(p, args, small_out)
    return args


def bench(args: argparse.Namespace) -> int:
    mode = "small" if args.small else "linux"
    work = (args.work / f"scaleout-{mode}").resolve()
    tools = lb.find_tools(["strongroom"])
    exe = tools[0].exe
    if exe is None or shutil.which("restic") is None:
        raise lb.BenchError("needs strongroom and restic (see bench/README.md)")
    src, description, files, logs = lb.prepare_run(args, work, tools)
    index = lb.index_tree(src)
    single: dict[str, dict[str, Step]] = {}
    par: dict[str, dict[str, Any]] = {}
    pg, ceph = PgCluster(), CephS3(memstore_bytes=MEMSTORE)  # in the system temp folder
    try:
        print("starting PostgreSQL and radosgw ...", flush=True)
        pg.start()
        ceph.start()
        infra = Infra(pg, ceph, work)
        with ExitStack() as stack:
            single = single_client(infra, exe, src, index, logs, args)
            if not args.no_parallel:
                trees = nb.build_trees(src, nb.split_tree(src, args.clients), work / "trees")
                for label, name, nodes in DEPLOYMENTS:
                    dep = deploy(infra, f"p-{name}", nodes, exe, logs, stack)
                    par[label] = parallel(exe, dep, trees, work, logs, args.timeout)
                    infra.drop(dep)
    finally:
        ceph.destroy()
        pg.destroy()
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": lb.machine_info(),
        "data": lb.data_info(description, files, index, []),
        "restic": lb.run_quiet(["restic", "version"]).split()[1],
        "clients": args.clients,
        "rounds": args.restore_rounds,
    }
    section = render(meta, single, par)
    print("\n" + section)
    lb.write_markdown(
        args.out, section, "<!-- scaleout-bench:start -->", "<!-- scaleout-bench:end -->"
    )
    if restore_root(work) != work:
        shutil.rmtree(restore_root(work), ignore_errors=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    bad = [n for n, s in single.items() for k, st in s.items() if st.rc != 0 or "**" in st.note]
    bad += [n for n, p in par.items() if p["failed"] or p["checks_failed"]]
    if bad:
        print(f"!!! failures in: {sorted(set(bad))}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return lb.run_locked(args, "scaleout-" + ("small" if args.small else "linux"), bench)


if __name__ == "__main__":
    raise SystemExit(main())
