"""`strongroom forget --keep-*` end to end: the real program on a local repository.

A history of snapshots is made once with `backup --time` at fixed UTC times (TZ=UTC, so the
hour/day/week/month/year buckets are the same on every machine); each test reads the decisions
of `forget --dry-run --json` and, on its own copy of the repository, runs the real forget. The
rules' fine print is tested without I/O in tests/test_retention.py; this file checks that the
command line applies them per series (host + paths), honours protection, and that
`--prune` really frees space without damaging what is kept.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli, Result, tree_state

KiB = 1024

# Series A (folder a/src) and series B (folder b/src). Times are UTC, all in the past.
TIMES_A = {
    "A1": "2025-01-10 09:00",  # Fri, ISO week 2
    "A2": "2025-03-15 10:00",  # Sat, week 11
    "A3": "2025-03-20 10:00",  # Thu, week 12
    "A4": "2025-06-02 08:00",  # Mon, week 23
    "A5": "2025-06-04 08:00",  # Wed, week 23
    "A6": "2025-06-10 08:00",  # Tue, week 24
    "A7": "2025-06-10 14:00",
    "A8": "2025-06-11 09:00",
    "A9": "2025-06-11 09:30",  # same hour as A8
    "A10": "2025-06-11 11:00",
}
TIMES_B = {
    "B1": "2024-12-31 23:00",
    "B2": "2025-05-01 12:00",
    "B3": "2025-06-11 10:00",
}


@dataclass
class History:
    repo: Path
    ids: dict[str, str]  # label -> snapshot id
    states: dict[str, dict[Any, tuple[Any, ...]]]  # label -> tree_state of its source

    def label(self, snap_id: str) -> str:
        return {v: k for k, v in self.ids.items()}[snap_id]


def utc_cli(tmp: Path) -> Cli:
    cli = Cli(tmp)
    cli.env["TZ"] = "UTC"
    return cli


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    tmp = tmp_path_factory.mktemp("forget-history")
    cli = utc_cli(tmp)
    cli.init()
    ids: dict[str, str] = {}
    states: dict[str, dict[Any, tuple[Any, ...]]] = {}
    for series, times in (("a", TIMES_A), ("b", TIMES_B)):
        src = tmp / series / "src"
        src.mkdir(parents=True)
        (src / "common.txt").write_text("the same in every snapshot\n")
        for label, when in times.items():
            # Every snapshot has content of its own, so forgetting it frees space.
            (src / "own.bin").write_bytes(random.Random(label).randbytes(150 * KiB))
            ids[label] = cli.backup(src, extra=("--time", when))["snapshot"]
            states[label] = tree_state(src)
    return History(cli.repo, ids, states)


@pytest.fixture
def copy(history: History, tmp_path: Path) -> Cli:
    """A private copy of the history's repository, to really forget things in."""
    cli = utc_cli(tmp_path)
    shutil.copytree(history.repo, cli.repo)
    return cli


def reader(history: History, tmp_path: Path) -> Cli:
    cli = utc_cli(tmp_path)
    cli.repo = history.repo
    cli.env["STRONGROOM_REPO"] = str(history.repo)
    return cli


def decisions(
    history: History, res: Result
) -> tuple[dict[str, list[str]], set[str], dict[str, Any]]:
    """(kept label -> reasons, removed labels, the raw JSON) from `forget --json`."""
    out = res.json()
    keep = {history.label(d["id"]): d["reasons"] for d in out["keep"]}
    remove = {history.label(d["id"]) for d in out["remove"]}
    assert not keep.keys() & remove
    assert keep.keys() | remove <= history.ids.keys()
    return keep, remove, out


def assert_error(res: Result, code: int, needle: str) -> None:
    """One clear line on stderr (click's own usage errors: a short block ending in it)."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    if lines and lines[0].startswith("Usage:"):
        assert len(lines) <= 3 and lines[-1].startswith("Error: "), res.stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("strongroom: error: "), res.stderr
    assert needle.lower() in lines[-1].lower(), (needle, res.stderr)


LAST, HOURLY, DAILY = "last snapshot", "hourly snapshot", "daily snapshot"
WEEKLY, MONTHLY, YEARLY = "weekly snapshot", "monthly snapshot", "yearly snapshot"

# policy -> kept label -> reasons (everything else is removed)
CASES: dict[str, tuple[tuple[str, ...], dict[str, list[str]]]] = {
    "last": (
        ("--keep-last", "3"),
        {"A10": [LAST], "A9": [LAST], "A8": [LAST], "B3": [LAST], "B2": [LAST], "B1": [LAST]},
    ),
    "hourly": (
        ("--keep-hourly", "3"),  # A9 and A8 share an hour: the newer one counts
        {
            "A10": [HOURLY],
            "A9": [HOURLY],
            "A7": [HOURLY],
            "B3": [HOURLY],
            "B2": [HOURLY],
            "B1": [HOURLY],
        },
    ),
    "daily": (
        ("--keep-daily", "2"),
        {"A10": [DAILY], "A7": [DAILY], "B3": [DAILY], "B2": [DAILY]},
    ),
    "weekly": (
        ("--keep-weekly", "2"),  # ISO weeks: A6..A10 in week 24, A4 and A5 in week 23
        {"A10": [WEEKLY], "A5": [WEEKLY], "B3": [WEEKLY], "B2": [WEEKLY]},
    ),
    "monthly": (
        ("--keep-monthly", "2"),
        {"A10": [MONTHLY], "A3": [MONTHLY], "B3": [MONTHLY], "B2": [MONTHLY]},
    ),
    "yearly": (("--keep-yearly", "1"), {"A10": [YEARLY], "B3": [YEARLY]}),
    "yearly-oldest": (
        ("--keep-yearly", "5"),  # counts left at the oldest: kept too (restic >= 0.17)
        {"A10": [YEARLY], "A1": ["oldest yearly snapshot"], "B3": [YEARLY], "B1": [YEARLY]},
    ),
    "daily-unlimited": (
        ("--keep-daily", "-1"),
        {
            **{label: [DAILY] for label in ("A10", "A7", "A5", "A4", "A3", "A2", "A1")},
            **{label: [DAILY] for label in ("B3", "B2", "B1")},
        },
    ),
    "within-day": (
        ("--keep-within", "1d"),  # after newest - 1d, per series: A6 (08:00) is just out
        {label: ["within 1d"] for label in ("A10", "A9", "A8", "A7", "B3")},
    ),
    "within-weeks": (
        ("--keep-within", "2w"),
        {label: ["within 14d"] for label in ("A10", "A9", "A8", "A7", "A6", "A5", "A4", "B3")},
    ),
    "combined": (
        ("--keep-last", "1", "--keep-daily", "2", "--keep-monthly", "3"),
        {
            "A10": [LAST, DAILY, MONTHLY],
            "A7": [DAILY],
            "A3": [MONTHLY],
            "A1": [MONTHLY],
            "B3": [LAST, DAILY, MONTHLY],
            "B2": [DAILY, MONTHLY],
            "B1": [MONTHLY],
        },
    ),
    "combined-within": (
        ("--keep-within", "1d", "--keep-weekly", "1", "--keep-yearly", "2"),
        {
            "A10": ["within 1d", WEEKLY, YEARLY],
            "A9": ["within 1d"],
            "A8": ["within 1d"],
            "A7": ["within 1d"],
            "A1": ["oldest yearly snapshot"],
            "B3": ["within 1d", WEEKLY, YEARLY],
            "B1": [YEARLY],
        },
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_policy_dry_run(history: History, tmp_path: Path, case: str) -> None:
    args, expected = CASES[case]
    res = reader(history, tmp_path).run("forget", *args, "--dry-run", "--json")
    keep, remove, out = decisions(history, res)
    assert keep == expected
    assert remove == history.ids.keys() - expected.keys()
    assert out["dry_run"] is True and out["prune"] is None
    # JSON times are the snapshots' own, in UTC.
    times = {**TIMES_A, **TIMES_B}
    for entry in out["keep"] + out["remove"]:
        assert entry["time"].startswith(times[history.label(entry["id"])].replace(" ", "T"))


def test_dry_run_changes_nothing_and_prints_a_table(history: History, tmp_path: Path) -> None:
    cli = reader(history, tmp_path)
    before = cli.run("snapshots", "--json").json()
    res = cli.run("forget", "--keep-daily", "2", "--dry-run")
    assert "would remove 9 snapshot(s), kept 4" in res.stdout
    assert history.ids["A10"][:8] in res.stdout and "daily snapshot" in res.stdout
    assert cli.run("snapshots", "--json").json() == before


def test_real_forget_follows_the_dry_run(history: History, copy: Cli) -> None:
    args, expected = CASES["combined"]
    dry = decisions(history, copy.run("forget", *args, "--dry-run", "--json"))[:2]
    keep, remove, out = decisions(history, copy.run("forget", *args, "--json"))
    assert (keep, remove) == dry
    assert keep == expected and out["dry_run"] is False and out["prune"] is None
    left = {s["id"] for s in copy.run("snapshots", "--json").json()}
    assert left == {history.ids[label] for label in expected}
    # Applying the same policy again keeps everything that is left.
    res = copy.run("forget", *args)
    assert f"removed 0 snapshot(s), kept {len(expected)}" in res.stdout
    copy.run("check")


def test_series_are_judged_separately(history: History, copy: Cli) -> None:
    """--keep-last 1 keeps the newest of each folder, not the newest overall; and a series
    with one snapshot left keeps it whatever else happens."""
    keep, _remove, _ = decisions(history, copy.run("forget", "--keep-last", "1", "--json"))
    assert set(keep) == {"A10", "B3"}
    keep, _remove, _ = decisions(history, copy.run("forget", "--keep-daily", "1", "--json"))
    assert set(keep) == {"A10", "B3"}


def test_named_snapshots_are_removed_even_if_the_policy_keeps_them(
    history: History, copy: Cli
) -> None:
    a1 = history.ids["A1"]
    keep, remove, _ = decisions(
        history, copy.run("forget", a1[:8], "--keep-last", "100", "--dry-run", "--json")
    )
    assert remove == {"A1"} and len(keep) == len(history.ids) - 1
    res = copy.run("forget", a1[:8], history.ids["B2"])
    assert res.stdout.splitlines() == [
        f"removed snapshot {a1[:8]}",
        f"removed snapshot {history.ids['B2'][:8]}",
    ]
    left = {s["id"] for s in copy.run("snapshots", "--json").json()}
    assert left == set(history.ids.values()) - {a1, history.ids["B2"]}


def test_protected_snapshots_are_never_removed(history: History, copy: Cli) -> None:
    ids = history.ids
    res = copy.run("protect", ids["A2"][:8], ids["B1"], ids["A10"])
    assert res.stdout.count("protected") == 3

    keep, _remove, _ = decisions(history, copy.run("forget", "--keep-last", "1", "--json"))
    assert keep == {
        "A2": ["protected"],
        "B1": ["protected"],
        "A10": ["protected", LAST],  # protection does not take A10 out of the counting
        "B3": [LAST],
    }
    left = {s["id"] for s in copy.run("snapshots", "--json").json()}
    assert left == {ids["A2"], ids["B1"], ids["A10"], ids["B3"]}

    # Naming a protected snapshot is refused, with or without a policy, and removes nothing.
    for extra in ((), ("--keep-last", "1"), ("--dry-run",)):
        res = copy.run("forget", ids["A2"][:8], *extra, check=False)
        assert_error(res, 2, "protected")
        assert "protect --remove" in res.stderr
    res = copy.run("forget", ids["B3"], ids["B1"], check=False)
    assert_error(res, 2, "protected")
    assert {s["id"] for s in copy.run("snapshots", "--json").json()} == left

    # Unprotected, it goes like any other.
    assert "unprotected" in copy.run("protect", "--remove", ids["A2"]).stdout
    copy.run("forget", ids["A2"])
    keep, _remove, _ = decisions(history, copy.run("forget", "--keep-last", "1", "--json"))
    assert set(keep) == {"A10", "B1", "B3"}
    copy.run("check")


def disk_pack_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "packs").glob("*/*"))


def test_forget_with_prune_reclaims_space_and_keeps_the_rest_intact(
    history: History, copy: Cli, tmp_path: Path
) -> None:
    before = disk_pack_bytes(copy.repo)
    keep, remove, out = decisions(
        history, copy.run("forget", "--keep-last", "2", "--prune", "--json")
    )
    assert set(keep) == {"A10", "A9", "B3", "B2"} and len(remove) == 9
    report = out["prune"]
    assert report is not None and report["dry_run"] is False
    # Every removed snapshot had 150 KiB of its own: at least that much per snapshot is gone.
    assert report["reclaimed_bytes"] >= 9 * 150 * KiB, report
    after = disk_pack_bytes(copy.repo)
    assert after == before - report["reclaimed_bytes"]
    assert {p.name for p in (copy.repo / "packs").glob("*/*")} == set(_indexed_packs(copy.repo)), (
        "prune left files the index does not know"
    )

    copy.run("check", "--read-data")
    for label in keep:
        target = tmp_path / f"restore-{label}"
        copy.restore(target, history.ids[label])
        assert tree_state(target / "src") == history.states[label], label

    # The text form; nothing more to forget, so nothing to prune.
    res = copy.run("forget", "--keep-last", "2", "--prune")
    assert "removed 0 snapshot(s), kept 4" in res.stdout and "pruned" not in res.stdout
    assert copy.run("forget", "--keep-last", "2", "--prune", "--json").json()["prune"] is None
    assert disk_pack_bytes(copy.repo) == after


def test_forget_named_with_prune_prints_what_it_reclaimed(history: History, copy: Cli) -> None:
    res = copy.run("forget", history.ids["A1"], "--prune")
    assert f"removed snapshot {history.ids['A1'][:8]}" in res.stdout
    assert "pruned:" in res.stdout and "reclaimed" in res.stdout


def _indexed_packs(repo: Path) -> list[str]:
    import sqlite3

    db = sqlite3.connect(f"file:{repo / 'index.sqlite'}?mode=ro", uri=True)
    try:
        return [str(r[0]) for r in db.execute("SELECT name FROM packs")]
    finally:
        db.close()


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("--keep-within", "5x"), 2, "invalid duration '5x'"),
        (("--keep-within", "0d"), 2, "longer than zero"),
        (("--keep-within", ""), 2, "empty duration"),
        (("--keep-last", "3", "--keep-within", "1q"), 2, "unknown unit"),
        (("--keep-daily", "-5"), 2, "--keep-daily"),
        (("--keep-last", "many"), 2, "--keep-last"),
        ((), 2, "name the snapshots to remove, or give a policy"),
        (("--dry-run", "--json"), 2, "name the snapshots to remove"),
        (("nosuchsnap",), 1, "no snapshot matches"),
    ],
)
def test_bad_input_is_one_clear_line(
    history: History, tmp_path: Path, args: tuple[str, ...], code: int, needle: str
) -> None:
    cli = reader(history, tmp_path)
    assert_error(cli.run("forget", *args, check=False), code, needle)


def test_bad_input_changes_nothing(copy: Cli, history: History) -> None:
    before = copy.run("snapshots", "--json").json()
    for args in (("--keep-within", "5x"), ("--keep-daily", "-5"), ()):
        assert copy.run("forget", *args, check=False).returncode == 2
    assert_error(copy.run("protect", check=False), 2, "SNAPSHOT_IDS")
    assert copy.run("snapshots", "--json").json() == before
