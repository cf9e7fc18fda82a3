"""Retention policy engine: restic `forget` semantics, durations, policy JSON, properties."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.errors import UsageError
from strongroom.retention import (
    Candidate,
    Decision,
    Duration,
    Policy,
    PolicyError,
    apply_policy,
    parse_duration,
)

NS = 1_000_000_000
# All fixtures lie in the past; pin "now" anyway so nothing depends on the clock.
NOW_NS = 2_000_000_000 * NS  # 2033-05-18


def ns(text: str) -> int:
    """ "2016-01-18 12:02:03" or "...:30.1" (UTC) -> Unix ns, exactly."""
    whole, _, frac = text.partition(".")
    dt = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    seconds = (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)
    return seconds * NS + int((frac or "0").ljust(9, "0"))


def run(
    cands: Sequence[Candidate], policy: Policy, *, now_ns: int = NOW_NS, tz: tzinfo | None = UTC
) -> list[Decision]:
    decisions = apply_policy(cands, policy, tz=tz, now_ns=now_ns)
    assert [d.candidate for d in decisions] == list(cands)
    return decisions


def kept_ids(decisions: Sequence[Decision]) -> list[str]:
    return [d.candidate.id for d in decisions if d.keep]


def reasons(decisions: Sequence[Decision]) -> dict[str, list[str]]:
    return {d.candidate.id: d.reasons for d in decisions if d.keep}


def series(*times: str, group: str = "", protected: Sequence[int] = ()) -> list[Candidate]:
    """Candidates named by their time, e.g. "2024-01-02 10:00:00" -> id "01-02 10"."""
    return [
        Candidate(id=t[5:13], time_ns=ns(t), group=group, protected=i in protected)
        for i, t in enumerate(times)
    ]


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1y5m7d2h", Duration(years=1, months=5, days=7, hours=2)),
        ("1y1d1m", Duration(years=1, months=1, days=1)),  # any order (restic's own test)
        ("2w", Duration(days=14)),
        ("1w3d", Duration(days=10)),
        ("36h", Duration(hours=36)),
        (" 7d\n", Duration(days=7)),
        ("0y1m", Duration(months=1)),
        ("0012d", Duration(days=12)),
    ],
)
def test_parse_duration_good(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "1",
        "y",
        "1x",
        "-1d",
        "+1d",
        "1d2d",
        "2w2w",
        "1.5d",
        "1 d",
        "1y 2m",
        "1D",
        "1M",
        "0d",
        "0y0m0d0h",
        "١d",  # a non-ASCII digit
        "1d" * 40,
        "1dd",
        "d1",
    ],
)
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_duration(text)
    message = str(info.value)
    assert message and "\n" not in message
    assert isinstance(info.value, UsageError)
    assert isinstance(info.value, ValueError)


def test_parse_duration_rejects_non_strings() -> None:
    with pytest.raises(UsageError):
        parse_duration(7)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["1y5m7d2h", "3m", "14d", "1y", "5h", "2y12h"])
def test_duration_str_round_trip(text: str) -> None:
    assert str(parse_duration(text)) == text


def test_duration_str() -> None:
    assert str(parse_duration("2w1d")) == "15d"
    assert str(Duration()) == "0d"


def test_duration_validates_fields() -> None:
    with pytest.raises(ValueError, match="days"):
        Duration(days=-1)
    with pytest.raises(ValueError, match="years"):
        Duration(years=True)
    with pytest.raises(ValueError):
        Duration(hours=1.5)  # type: ignore[arg-type]
    assert Duration().is_zero()
    assert not Duration(hours=1).is_zero()


@pytest.mark.parametrize(
    ("start", "duration", "expected"),
    [
        # Day-of-month clamping (Go's AddDate would roll over into the next month instead).
        ("2023-01-31 10:00:00", "1m", "2022-12-31 10:00:00"),
        ("2023-03-31 10:00:00", "1m", "2023-02-28 10:00:00"),
        ("2024-03-31 10:00:00", "1m", "2024-02-29 10:00:00"),
        ("2023-05-31 10:00:00", "3m", "2023-02-28 10:00:00"),
        ("2024-01-31 10:00:00", "11m", "2023-02-28 10:00:00"),
        ("2024-01-15 10:00:00", "13m", "2022-12-15 10:00:00"),
        # Leap days.
        ("2024-02-29 10:00:00", "1y", "2023-02-28 10:00:00"),
        ("2024-02-29 10:00:00", "4y", "2020-02-29 10:00:00"),
        ("2024-03-01 10:00:00", "1d", "2024-02-29 10:00:00"),
        ("2023-03-01 10:00:00", "1d", "2023-02-28 10:00:00"),
        ("2025-03-29 10:00:00", "1y1m", "2024-02-29 10:00:00"),
        # Years and months first (clamped), then days, then hours.
        ("2023-03-31 10:00:00", "1m1d", "2023-02-27 10:00:00"),
        ("2016-01-18 12:02:03", "1y2m3d3h", "2014-11-15 09:02:03"),
        ("2024-01-01 01:00:00", "2h", "2023-12-31 23:00:00"),
        ("2024-01-01 01:00:00", "2w", "2023-12-18 01:00:00"),
    ],
)
def test_duration_before_calendar(start: str, duration: str, expected: str) -> None:
    t = datetime.fromisoformat(start).replace(tzinfo=UTC)
    assert parse_duration(duration).before(t) == datetime.fromisoformat(expected).replace(
        tzinfo=UTC
    )
    naive = datetime.fromisoformat(start)
    assert parse_duration(duration).before(naive) == datetime.fromisoformat(expected)


def test_duration_before_keeps_wall_clock_for_days_but_not_hours() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # DST started 2024-03-31 02:00 CET -> 03:00 CEST.
    t = datetime(2024, 3, 31, 12, 0, tzinfo=berlin)
    one_day = Duration(days=1).before(t)
    assert one_day == datetime(2024, 3, 30, 12, 0, tzinfo=berlin)
    assert t.astimezone(UTC) - one_day.astimezone(UTC) == timedelta(hours=23)
    day_in_hours = Duration(hours=24).before(t)
    assert day_in_hours.replace(tzinfo=None) == datetime(2024, 3, 30, 11, 0)
    assert day_in_hours.tzinfo is berlin
    assert t.astimezone(UTC) - day_in_hours.astimezone(UTC) == timedelta(hours=24)


def test_duration_before_year_one_overflows() -> None:
    with pytest.raises(OverflowError):
        Duration(years=3000).before(datetime(2024, 1, 1, tzinfo=UTC))


# --------------------------------------------------------------------------- policies


def test_policy_defaults_and_emptiness() -> None:
    assert Policy().is_empty()
    assert not Policy(last=1).is_empty()
    assert not Policy(yearly=-1).is_empty()
    assert not Policy(within=Duration(hours=1)).is_empty()
    assert Policy().to_json() == {}
    assert Policy.from_json({}) == Policy()


@pytest.mark.parametrize(
    "policy",
    [
        Policy(),
        Policy(last=3),
        Policy(last=3, daily=7, within=parse_duration("1y")),
        Policy(hourly=24, daily=7, weekly=4, monthly=12, yearly=-1),
        Policy(last=-1, within=parse_duration("1y2m3d4h")),
        Policy(within=parse_duration("2w")),
    ],
)
def test_policy_json_round_trip(policy: Policy) -> None:
    assert Policy.from_json(policy.to_json()) == policy


def test_policy_to_json_shape() -> None:
    policy = Policy(last=3, daily=7, yearly=-1, within=parse_duration("1y6m"))
    assert policy.to_json() == {"last": 3, "daily": 7, "yearly": -1, "within": "1y6m"}
    assert Policy.from_json({"daily": 0, "within": None}) == Policy()


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "last=3",
        {"keep_last": 3},
        {"last": 3, "bogus": 1},
        {"last": True},
        {"last": 1.0},
        {"last": "3"},
        {"last": None},
        {"daily": -2},
        {"within": 7},
        {"within": ""},
        {"within": "0d"},
        {"within": "1q"},
        {"within": {"days": 1}},
    ],
)
def test_policy_from_json_rejects(obj: object) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_json(obj)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, UsageError)


def test_policy_constructor_validates() -> None:
    with pytest.raises(ValueError, match="keep-daily"):
        Policy(daily=-2)
    with pytest.raises(ValueError, match="keep-last"):
        Policy(last=True)
    with pytest.raises(ValueError, match="keep-within"):
        Policy(within=Duration())
    with pytest.raises(ValueError, match="keep-within"):
        Policy(within="1d")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "text"),
    [
        (Policy(last=3, daily=7, within=parse_duration("1y")), "keep last 3, daily 7, within 1y"),
        (Policy(hourly=24, weekly=4, monthly=-1), "keep hourly 24, weekly 4, all monthly"),
        (Policy(last=-1), "keep all"),
        (Policy(yearly=10), "keep yearly 10"),
        (Policy(), "keep everything (empty policy)"),
    ],
)
def test_policy_describe(policy: Policy, text: str) -> None:
    assert policy.describe() == text


# --------------------------------------------------------------------------- single rules

HOURS = series(
    "2024-01-03 10:50:00",
    "2024-01-03 10:10:00",
    "2024-01-03 09:30:00",
    "2024-01-02 23:59:59",
    "2024-01-02 08:00:00",
    "2024-01-01 12:00:00",
    "2024-01-01 11:00:00",
)


def test_empty_policy_keeps_everything_without_reasons() -> None:
    decisions = run(HOURS, Policy())
    assert all(d.keep and d.reasons == [] for d in decisions)


def test_no_candidates() -> None:
    assert apply_policy([], Policy(last=1)) == []


def test_keep_last() -> None:
    d = run(HOURS, Policy(last=3))
    assert kept_ids(d) == ["01-03 10", "01-03 10", "01-03 09"]
    assert all(r == ["last snapshot"] for r in reasons(d).values())
    assert kept_ids(run(HOURS, Policy(last=100))) == [c.id for c in HOURS]


def test_keep_hourly() -> None:
    d = run(HOURS, Policy(hourly=3))
    assert [c.candidate.time_ns for c in d if c.keep] == [
        ns("2024-01-03 10:50:00"),
        ns("2024-01-03 09:30:00"),
        ns("2024-01-02 23:59:59"),
    ]


def test_keep_daily() -> None:
    d = run(HOURS, Policy(daily=2))
    assert reasons(d) == {"01-03 10": ["daily snapshot"], "01-02 23": ["daily snapshot"]}
    assert d[0].keep and not d[1].keep  # the newer of the two "01-03 10"


def test_oldest_snapshot_kept_while_counts_remain() -> None:
    # restic >= 0.17 (PR #4366, reason wording from PR #5039): three days exist, seven were
    # asked for, so the oldest snapshot is kept too although its day is already represented.
    d = run(HOURS, Policy(daily=7))
    assert reasons(d) == {
        "01-03 10": ["daily snapshot"],
        "01-02 23": ["daily snapshot"],
        "01-01 12": ["daily snapshot"],
        "01-01 11": ["oldest daily snapshot"],
    }
    # With the counts used up before the oldest snapshot, it goes.
    assert "01-01 11" not in kept_ids(run(HOURS, Policy(daily=3)))
    # When the oldest snapshot starts a new bucket it is an ordinary bucket keep.
    d = run(HOURS[:6], Policy(daily=3))
    assert reasons(d)["01-01 12"] == ["daily snapshot"]


def test_keep_weekly_uses_iso_weeks() -> None:
    cands = series(
        "2025-01-02 12:00:00",  # Thu, ISO 2025-W01
        "2024-12-31 12:00:00",  # Tue, ISO 2025-W01 as well
        "2024-12-29 12:00:00",  # Sun, ISO 2024-W52
        "2024-12-23 12:00:00",  # Mon, ISO 2024-W52
        "2024-12-22 12:00:00",  # Sun, ISO 2024-W51
    )
    assert kept_ids(run(cands, Policy(weekly=2))) == ["01-02 12", "12-29 12"]
    assert kept_ids(run(cands, Policy(weekly=3))) == ["01-02 12", "12-29 12", "12-22 12"]
    # A calendar year is not an ISO year: yearly splits what weekly joins.
    assert kept_ids(run(cands, Policy(yearly=1))) == ["01-02 12"]
    assert kept_ids(run(cands, Policy(yearly=2))) == ["01-02 12", "12-31 12"]


def test_keep_monthly_and_yearly() -> None:
    cands = series(
        "2024-03-01 00:00:00",
        "2024-02-29 23:00:00",
        "2024-02-01 00:00:00",
        "2023-12-31 23:59:59",
        "2023-01-01 00:00:00",
        "2022-06-01 00:00:00",
    )
    assert kept_ids(run(cands, Policy(monthly=3))) == ["03-01 00", "02-29 23", "12-31 23"]
    d = run(cands, Policy(yearly=2))
    assert reasons(d) == {"03-01 00": ["yearly snapshot"], "12-31 23": ["yearly snapshot"]}


def test_unlimited_counts() -> None:
    d = run(HOURS, Policy(daily=-1))
    assert reasons(d) == {
        "01-03 10": ["daily snapshot"],
        "01-02 23": ["daily snapshot"],
        "01-01 12": ["daily snapshot"],
        "01-01 11": ["oldest daily snapshot"],
    }
    assert all(dec.keep for dec in run(HOURS, Policy(last=-1)))


def test_buckets_follow_the_time_zone() -> None:
    # 23:30 UTC on Jan 1 is already Jan 2 in Berlin (UTC+1) and still Jan 1 in New York.
    cands = series("2024-01-01 23:30:00", "2024-01-01 22:30:00", "2024-01-01 12:00:00")
    berlin = ZoneInfo("Europe/Berlin")
    assert kept_ids(run(cands, Policy(daily=1))) == ["01-01 23"]
    assert kept_ids(run(cands, Policy(daily=2), tz=berlin)) == ["01-01 23", "01-01 22"]
    # With one daily count the oldest snapshot is not reached with counts left.
    assert kept_ids(run(cands, Policy(daily=1), tz=berlin)) == ["01-01 23"]


@pytest.fixture
def local_zone_berlin() -> Iterator[None]:
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_tz_none_is_the_system_zone(local_zone_berlin: None) -> None:
    cands = series("2024-01-01 23:30:00", "2024-01-01 22:30:00", "2024-01-01 12:00:00")
    policy = Policy(daily=2)
    assert kept_ids(apply_policy(cands, policy, now_ns=NOW_NS)) == ["01-01 23", "01-01 22"]
    # within across the spring DST change: calendar days keep the wall-clock time.
    cands = series("2024-03-31 10:00:00", "2024-03-30 11:00:00", "2024-03-30 10:59:59")
    policy = Policy(within=Duration(days=1))
    berlin = ZoneInfo("Europe/Berlin")
    assert kept_ids(apply_policy(cands, policy, now_ns=NOW_NS)) == ["03-31 10"]
    assert kept_ids(run(cands, policy, tz=berlin)) == ["03-31 10"]
    # 2024-03-31 12:00 CEST minus one calendar day is 2024-03-30 12:00 CET = 11:00 UTC,
    # and the cut-off itself is excluded (restic keeps snapshots strictly after it).
    cands = series("2024-03-31 10:00:00", "2024-03-30 11:00:01", "2024-03-30 11:00:00")
    assert kept_ids(apply_policy(cands, policy, now_ns=NOW_NS)) == ["03-31 10", "03-30 11"]
    assert kept_ids(run(cands, policy, tz=berlin)) == ["03-31 10", "03-30 11"]


# --------------------------------------------------------------------------- keep-within


def test_within_is_measured_from_the_newest_snapshot() -> None:
    cands = series("2020-06-10 12:00:00", "2020-06-04 12:00:01", "2020-06-03 12:00:00")
    d = run(cands, Policy(within=parse_duration("7d")))
    assert reasons(d) == {"06-10 12": ["within 7d"], "06-04 12": ["within 7d"]}


def test_within_boundary_is_exclusive_to_the_nanosecond() -> None:
    newest = ns("2023-03-31 12:00:00")
    cut = ns("2023-02-28 12:00:00")  # clamped: restic/Go would cut at 2023-03-03 12:00
    cands = [
        Candidate("new", newest),
        Candidate("after", cut + 1),
        Candidate("at", cut),
        Candidate("before", cut - 1),
    ]
    assert kept_ids(run(cands, Policy(within=parse_duration("1m")))) == ["new", "after"]


def test_within_keeps_sub_second_offset_of_newest() -> None:
    newest = ns("2024-01-02 00:00:00.5")
    cands = [
        Candidate("new", newest),
        Candidate("a", ns("2024-01-01 00:00:00.6")),
        Candidate("b", ns("2024-01-01 00:00:00.5")),
    ]
    assert kept_ids(run(cands, Policy(within=Duration(days=1)))) == ["new", "a"]


@pytest.mark.parametrize(
    ("newest", "within", "kept_from"),
    [
        ("2023-01-31 00:00:00", "1m", "2022-12-31 00:00:00"),
        ("2023-03-31 00:00:00", "1m", "2023-02-28 00:00:00"),
        ("2024-03-31 00:00:00", "1m", "2024-02-29 00:00:00"),
        ("2024-02-29 00:00:00", "1y", "2023-02-28 00:00:00"),
        ("2028-02-29 00:00:00", "4y", "2024-02-29 00:00:00"),
        ("2024-03-01 00:00:00", "1m1d", "2024-01-31 00:00:00"),
    ],
)
def test_within_month_and_year_arithmetic(newest: str, within: str, kept_from: str) -> None:
    cut = ns(kept_from)
    cands = [
        Candidate("newest", ns(newest)),
        Candidate("just-in", cut + NS),
        Candidate("at-cut", cut),
        Candidate("day-before", cut - 86400 * NS),
    ]
    assert kept_ids(run(cands, Policy(within=parse_duration(within)))) == ["newest", "just-in"]


def test_within_ignores_future_snapshots_as_reference() -> None:
    now = ns("2024-06-01 00:00:00")
    cands = [
        Candidate("future", ns("2099-01-01 00:00:00")),
        Candidate("recent", ns("2024-05-31 00:00:00")),
        Candidate("week-old", ns("2024-05-25 00:00:00")),
    ]
    d = run(cands, Policy(within=parse_duration("2d")), now_ns=now)
    # The future snapshot is after the cut-off, so it is kept as well.
    assert kept_ids(d) == ["future", "recent"]
    # If every snapshot is in the future, `within` keeps them all (restic's zero reference).
    d = run(cands[:1], Policy(within=parse_duration("2d")), now_ns=now)
    assert kept_ids(d) == ["future"]


def test_within_that_reaches_before_year_one_keeps_all() -> None:
    cands = series("2024-01-01 00:00:00", "1900-01-01 00:00:00")
    d = run(cands, Policy(within=Duration(years=5000)))
    assert all(dec.keep for dec in d)


def test_within_default_now_is_the_clock() -> None:
    cands = [Candidate("a", time.time_ns() - NS), Candidate("b", time.time_ns() - 3 * 3600 * NS)]
    d = apply_policy(cands, Policy(within=Duration(hours=1)), tz=UTC)
    assert kept_ids(d) == ["a"]


# --------------------------------------------------------------------------- combinations


def test_combined_rules_list_every_reason() -> None:
    # Newest is 01-03 10:50, so "within 1d" reaches back to 01-02 10:50.
    d = run(HOURS, Policy(last=2, daily=2, within=parse_duration("1d")))
    assert [x.reasons for x in d] == [
        ["within 1d", "last snapshot", "daily snapshot"],  # 01-03 10:50
        ["within 1d", "last snapshot"],  # 01-03 10:10
        ["within 1d"],  # 01-03 09:30
        ["within 1d", "daily snapshot"],  # 01-02 23:59:59
        [],  # 01-02 08:00
        [],  # 01-01 12:00: both counts are used up, so the oldest-snapshot rule is off
        [],  # 01-01 11:00
    ]


def test_ties_are_broken_by_id_not_input_order() -> None:
    t = ns("2024-01-01 00:00:00")
    a, b, c = Candidate("aaa", t), Candidate("bbb", t), Candidate("ccc", t - NS)
    for order in ([a, b, c], [b, a, c], [c, b, a]):
        d = run(order, Policy(last=1))
        assert kept_ids(d) == ["aaa"]
        d = run(order, Policy(daily=1))
        assert kept_ids(d) == ["aaa"]
        d = run(order, Policy(daily=2))  # oldest rule: "ccc" is the oldest
        assert sorted(kept_ids(d)) == ["aaa", "ccc"]


def test_groups_are_judged_independently() -> None:
    host_a = series("2024-01-03 00:00:00", "2024-01-02 00:00:00", group="a")
    host_b = series("2020-05-05 00:00:00", "2020-05-04 00:00:00", "2020-05-01 00:00:00", group="b")
    mixed = [host_b[0], host_a[0], host_b[1], host_a[1], host_b[2]]
    d = run(mixed, Policy(last=1, within=parse_duration("2d")))
    assert [(x.candidate.group, x.candidate.id, x.reasons) for x in d if x.keep] == [
        ("b", "05-05 00", ["within 2d", "last snapshot"]),
        ("a", "01-03 00", ["within 2d", "last snapshot"]),
        ("b", "05-04 00", ["within 2d"]),
        ("a", "01-02 00", ["within 2d"]),
    ]


def test_protected_is_always_kept_and_uses_up_counts() -> None:
    # Like restic's --keep-tag: a tagged/protected snapshot still takes its turn in the
    # counting rules (restic's loop does not skip it), so here `last 2` ends at 01-03 10:10.
    cands = series(
        "2024-01-03 10:50:00",
        "2024-01-03 10:10:00",
        "2024-01-03 09:30:00",
        "2024-01-01 11:00:00",
        protected=(0, 3),
    )
    d = run(cands, Policy(last=2))
    assert [x.reasons for x in d] == [
        ["protected", "last snapshot"],
        ["last snapshot"],
        [],
        ["protected"],
    ]
    assert [x.keep for x in d] == [True, True, False, True]
    # A protected snapshot that is outside every rule is still kept.
    d = run(cands, Policy(within=parse_duration("1h")))
    assert [x.reasons for x in d] == [["protected", "within 1h"], ["within 1h"], [], ["protected"]]


# --------------------------------------------------------------------------- restic's golden files

# restic internal/data/snapshot_policy_test.go: testExpireSnapshots, in its input order. Our ids
# sort in that order, so equal times are ordered as restic's stable sort orders them.
RESTIC_TIMES = [
    *(f"2014-09-{d} 10:20:30" for d in ("01", "02", "05", "06", "08", "09", "10", "11", "20")),
    "2014-09-22 10:20:30",
    *(f"2014-08-{d} 10:20:30" for d in ("08", "10", "12", "13")),
    "2014-08-13 10:20:30.1",
    *(f"2014-08-{d} 10:20:30" for d in ("15", "18", "20", "21", "22")),
    *(f"2014-10-{d} 10:20:30" for d in ("01", "02", "05", "06", "08", "09", "10", "11", "20")),
    "2014-10-22 10:20:30",
    *(f"2014-11-{d} 10:20:30" for d in ("08", "10", "12", "13")),
    "2014-11-13 10:20:30.1",
    *(f"2014-11-{d} 10:20:30" for d in ("15", "18", "20", "21", "22")),
    *(f"2015-09-{d} 10:20:30" for d in ("01", "02", "05", "06", "08", "09", "10", "11", "20")),
    "2015-09-22 10:20:30",
    *(f"2015-08-{d} 10:20:30" for d in ("08", "10", "12", "13")),
    "2015-08-13 10:20:30.1",
    *(f"2015-08-{d} 10:20:30" for d in ("15", "18", "20", "21", "22")),
    *(f"2015-10-{d} 10:20:30" for d in ("01", "02", "05", "06", "08", "09", "10", "11", "20")),
    *(["2015-10-22 10:20:30"] * 5),
    *(f"2015-11-{d} 10:20:30" for d in ("08", "10", "12", "13")),
    "2015-11-13 10:20:30.1",
    *(f"2015-11-{d} 10:20:30" for d in ("15", "18", "20", "21", "22")),
    "2016-01-01 01:02:03",
    "2016-01-01 01:03:03",
    "2016-01-01 07:08:03",
    "2016-01-03 07:02:03",
    "2016-01-04 10:23:03",
    "2016-01-04 11:23:03",
    "2016-01-04 12:23:03",
    "2016-01-04 12:24:03",
    "2016-01-04 12:28:03",
    "2016-01-04 12:30:03",
    "2016-01-04 16:23:03",
    "2016-01-05 09:02:03",
    "2016-01-06 08:02:03",
    "2016-01-07 10:02:03",
    "2016-01-08 20:02:03",
    "2016-01-09 21:02:03",
    "2016-01-12 21:02:03",
    "2016-01-12 21:08:03",
    "2016-01-18 12:02:03",
]
# Snapshots restic's fixture tags "foo" (for the --keep-tag cases).
RESTIC_FOO = {
    *(f"2014-10-{d} 10:20:30" for d in ("01", "02", "05", "06", "08", "09", "10", "11", "20")),
    "2014-10-22 10:20:30",
    *(f"2014-11-{d} 10:20:30" for d in ("08", "10", "12", "13", "15")),
}
RESTIC = [Candidate(f"s{i:03d}", ns(t)) for i, t in enumerate(RESTIC_TIMES)]


def restic_kept(policy: Policy, cands: Sequence[Candidate] = RESTIC) -> list[tuple[str, list[str]]]:
    """(time, reasons) of the kept snapshots, newest first, like restic's golden "reasons"."""
    decisions = run(cands, policy)
    kept = sorted(
        (d for d in decisions if d.keep), key=lambda d: (-d.candidate.time_ns, d.candidate.id)
    )
    return [(RESTIC_TIMES[int(d.candidate.id[1:])], d.reasons) for d in kept]


def test_restic_fixture_is_complete() -> None:
    assert len(RESTIC) == 103
    assert RESTIC_TIMES.count("2015-10-22 10:20:30") == 5


def test_restic_policy_keep_snapshots_5_hourly_20() -> None:
    expected = [
        "2016-01-18 12:02:03",
        "2016-01-12 21:08:03",
        "2016-01-09 21:02:03",
        "2016-01-08 20:02:03",
        "2016-01-07 10:02:03",
        "2016-01-06 08:02:03",
        "2016-01-05 09:02:03",
        "2016-01-04 16:23:03",
        "2016-01-04 12:30:03",
        "2016-01-04 11:23:03",
        "2016-01-04 10:23:03",
        "2016-01-03 07:02:03",
        "2016-01-01 07:08:03",
        "2016-01-01 01:03:03",
        "2015-11-22 10:20:30",
        "2015-11-21 10:20:30",
        "2015-11-20 10:20:30",
        "2015-11-18 10:20:30",
        "2015-11-15 10:20:30",
        "2015-11-13 10:20:30.1",
    ]
    assert restic_kept(Policy(hourly=20)) == [(t, ["hourly snapshot"]) for t in expected]


def test_restic_policy_keep_snapshots_7_daily_10() -> None:
    expected = [
        "2016-01-18 12:02:03",
        "2016-01-12 21:08:03",
        "2016-01-09 21:02:03",
        "2016-01-08 20:02:03",
        "2016-01-07 10:02:03",
        "2016-01-06 08:02:03",
        "2016-01-05 09:02:03",
        "2016-01-04 16:23:03",
        "2016-01-03 07:02:03",
        "2016-01-01 07:08:03",
    ]
    assert restic_kept(Policy(daily=10)) == [(t, ["daily snapshot"]) for t in expected]


def test_restic_policy_keep_snapshots_15_daily2_weekly2_monthly6() -> None:
    assert restic_kept(Policy(daily=2, weekly=2, monthly=6)) == [
        ("2016-01-18 12:02:03", ["daily snapshot", "weekly snapshot", "monthly snapshot"]),
        ("2016-01-12 21:08:03", ["daily snapshot", "weekly snapshot"]),
        ("2015-11-22 10:20:30", ["monthly snapshot"]),
        ("2015-10-22 10:20:30", ["monthly snapshot"]),
        ("2015-09-22 10:20:30", ["monthly snapshot"]),
        ("2015-08-22 10:20:30", ["monthly snapshot"]),
        ("2014-11-22 10:20:30", ["monthly snapshot"]),
    ]
    # Of the five snapshots at 2015-10-22 10:20:30 the first in restic's order is kept.
    kept = {d.candidate.id for d in run(RESTIC, Policy(daily=2, weekly=2, monthly=6)) if d.keep}
    ties = [c.id for c in RESTIC if RESTIC_TIMES[int(c.id[1:])] == "2015-10-22 10:20:30"]
    assert [i in kept for i in ties] == [True, False, False, False, False]


def test_restic_policy_keep_snapshots_16_yearly_10() -> None:
    assert restic_kept(Policy(yearly=10)) == [
        ("2016-01-18 12:02:03", ["yearly snapshot"]),
        ("2015-11-22 10:20:30", ["yearly snapshot"]),
        ("2014-11-22 10:20:30", ["yearly snapshot"]),
        ("2014-08-08 10:20:30", ["oldest yearly snapshot"]),
    ]


def test_restic_policy_keep_snapshots_24_within_1m() -> None:
    expected = sorted((t for t in RESTIC_TIMES if t.startswith("2016-")), key=ns, reverse=True)
    assert len(expected) == 19
    assert restic_kept(Policy(within=parse_duration("1m"))) == [
        (t, ["within 1m"]) for t in expected
    ]


def test_restic_policy_keep_snapshots_29_within_1y2m3d3h() -> None:
    # The golden file keeps 68 snapshots, the oldest being 2014-11-15 10:20:30 (the cut-off
    # is 2014-11-15 09:02:03); 2014-11-13 10:20:30.1 is the first one removed.
    kept = restic_kept(Policy(within=parse_duration("1y2m3d3h")))
    assert len(kept) == 68
    assert kept[-1] == ("2014-11-15 10:20:30", ["within 1y2m3d3h"])
    assert all(ns(t) > ns("2014-11-15 09:02:03") for t, _ in kept)


def test_restic_policy_keep_snapshots_39_daily3_weekly2_monthly_all_yearly_all() -> None:
    assert restic_kept(Policy(daily=3, weekly=2, monthly=-1, yearly=-1)) == [
        (
            "2016-01-18 12:02:03",
            ["daily snapshot", "weekly snapshot", "monthly snapshot", "yearly snapshot"],
        ),
        ("2016-01-12 21:08:03", ["daily snapshot", "weekly snapshot"]),
        ("2016-01-09 21:02:03", ["daily snapshot"]),
        ("2015-11-22 10:20:30", ["monthly snapshot", "yearly snapshot"]),
        ("2015-10-22 10:20:30", ["monthly snapshot"]),
        ("2015-09-22 10:20:30", ["monthly snapshot"]),
        ("2015-08-22 10:20:30", ["monthly snapshot"]),
        ("2014-11-22 10:20:30", ["monthly snapshot", "yearly snapshot"]),
        ("2014-10-22 10:20:30", ["monthly snapshot"]),
        ("2014-09-22 10:20:30", ["monthly snapshot"]),
        ("2014-08-22 10:20:30", ["monthly snapshot"]),
        ("2014-08-08 10:20:30", ["oldest monthly snapshot", "oldest yearly snapshot"]),
    ]


def test_restic_keep_all_cases_36_and_37() -> None:
    # policy_keep_snapshots_36 {Last: -1} and _37 {Last: -1, Hourly: -1} keep all 103.
    assert len(restic_kept(Policy(last=-1))) == 103
    assert len(restic_kept(Policy(last=-1, hourly=-1))) == 103


def test_restic_keep_tag_case_18_as_protected() -> None:
    # policy_keep_snapshots_18 {Tags: [[foo]]} keeps exactly the "foo"-tagged snapshots.
    cands = [
        Candidate(c.id, c.time_ns, protected=RESTIC_TIMES[int(c.id[1:])] in RESTIC_FOO)
        for c in RESTIC
    ]
    # An all-protected policy would be empty, so add a rule that only keeps the newest.
    kept = restic_kept(Policy(within=Duration(hours=1)), cands)
    assert [t for t, _ in kept] == [
        "2016-01-18 12:02:03",
        *sorted(RESTIC_FOO, key=ns, reverse=True),
    ]


# --------------------------------------------------------------------------- properties

count = st.one_of(st.integers(0, 6), st.just(-1))
counts = st.fixed_dictionaries(
    {n: count for n in ("last", "hourly", "daily", "weekly", "monthly", "yearly")}
)
withins = st.one_of(
    st.none(),
    st.builds(
        Duration,
        years=st.integers(0, 2),
        months=st.integers(0, 13),
        days=st.integers(0, 40),
        hours=st.integers(0, 48),
    ).filter(lambda d: not d.is_zero()),
)
policies = st.builds(lambda c, w: Policy(within=w, **c), counts, withins)

BASE = ns("2020-01-01 00:00:00")
candidate_lists = st.lists(
    st.builds(
        Candidate,
        id=st.text("abcdef", min_size=1, max_size=3),
        # Three years of times with many collisions in hours/days/weeks.
        time_ns=st.integers(0, 3 * 365 * 24).map(lambda h: BASE + h * 3600 * NS)
        | st.integers(0, 3 * 365 * 24 * 3600 * NS).map(lambda x: BASE + x),
        group=st.sampled_from(["", "g1", "g2"]),
        protected=st.booleans(),
    ),
    max_size=40,
    unique_by=lambda c: c.id,
)


def _grow(value: int, extra: int) -> int:
    if value == -1 or extra == -1:
        return -1
    return value + extra


@settings(max_examples=300, deadline=None)
@given(candidate_lists, counts, withins, counts)
def test_property_larger_counts_keep_a_superset(
    cands: list[Candidate], base: dict[str, int], within: Duration | None, extra: dict[str, int]
) -> None:
    small = Policy(within=within, **base)
    large = Policy(within=within, **{k: _grow(v, extra[k]) for k, v in base.items()})
    if small.is_empty():
        return
    kept_small = [d.keep for d in run(cands, small)]
    kept_large = [d.keep for d in run(cands, large)]
    assert all(b for a, b in zip(kept_small, kept_large, strict=True) if a)


@settings(max_examples=300, deadline=None)
@given(candidate_lists, st.integers(1, 8))
def test_property_keep_last_keeps_exactly_n_per_group(cands: list[Candidate], n: int) -> None:
    d = run(cands, Policy(last=n))
    for group in {c.group for c in cands}:
        members = [x for x in d if x.candidate.group == group]
        by_last = [x for x in members if "last snapshot" in x.reasons]
        assert len(by_last) == min(n, len(members))
        newest = sorted(members, key=lambda x: (-x.candidate.time_ns, x.candidate.id))[:n]
        assert {id(x) for x in by_last} == {id(x) for x in newest}
        # Nothing else is kept but protected snapshots.
        assert all(x.candidate.protected for x in members if x.keep and x not in by_last)


@settings(max_examples=300, deadline=None)
@given(candidate_lists, policies)
def test_property_invariants(cands: list[Candidate], policy: Policy) -> None:
    d = run(cands, policy)
    assert len(d) == len(cands)
    for x in d:
        if x.candidate.protected:
            assert x.keep
        if policy.is_empty():
            assert x.keep and x.reasons == []
        elif x.keep:
            assert x.reasons
            assert len(set(x.reasons)) == len(x.reasons)
            assert ("protected" in x.reasons) == x.candidate.protected
        else:
            assert x.reasons == []
    if not policy.is_empty():
        # The newest snapshot of every group survives any non-empty policy.
        for group in {c.group for c in cands}:
            members = [x for x in d if x.candidate.group == group]
            newest = min(members, key=lambda x: (-x.candidate.time_ns, x.candidate.id))
            assert newest.keep


@settings(max_examples=100, deadline=None)
@given(candidate_lists, policies, st.randoms(use_true_random=False))
def test_property_input_order_does_not_matter(
    cands: list[Candidate], policy: Policy, rnd: object
) -> None:
    shuffled = list(enumerate(cands))
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    before = run(cands, policy)
    after = run([c for _, c in shuffled], policy)
    for (i, _), dec in zip(shuffled, after, strict=True):
        assert dec.keep == before[i].keep
        assert dec.reasons == before[i].reasons


@settings(max_examples=200, deadline=None)
@given(policies)
def test_property_policy_json_round_trip(policy: Policy) -> None:
    assert Policy.from_json(policy.to_json()) == policy


BUCKETS: dict[str, Callable[[datetime], str]] = {
    "hourly": lambda t: t.strftime("%Y%m%d%H"),
    "daily": lambda t: t.strftime("%Y%m%d"),
    "weekly": lambda t: "{:04d}{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t: t.strftime("%Y%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


@settings(max_examples=300, deadline=None)
@given(candidate_lists, st.sampled_from(sorted(BUCKETS)), count.filter(lambda n: n != 0))
def test_property_bucket_rule_matches_its_definition(
    cands: list[Candidate], rule: str, n: int
) -> None:
    """Newest snapshot of each of the n most recent buckets, plus the oldest snapshot when the
    newer snapshots span fewer than n buckets (restic >= 0.17)."""
    d = run(cands, Policy.from_json({rule: n}))
    for group in {c.group for c in cands}:
        members = sorted((c for c in cands if c.group == group), key=lambda c: (-c.time_ns, c.id))
        key = BUCKETS[rule]
        bucket_of = {c.id: key(datetime.fromtimestamp(c.time_ns // NS, UTC)) for c in members}
        newest_per_bucket: dict[str, str] = {}
        for c in members:
            newest_per_bucket.setdefault(bucket_of[c.id], c.id)
        ranked = sorted(newest_per_bucket, reverse=True)
        chosen = ranked if n == -1 else ranked[:n]
        expected = {newest_per_bucket[b] for b in chosen}
        others = {bucket_of[c.id] for c in members[:-1]}
        if n == -1 or len(others) < n:
            expected.add(members[-1].id)
        got = {
            x.candidate.id
            for x in d
            if x.candidate.group == group and any(r.endswith(f"{rule} snapshot") for r in x.reasons)
        }
        assert got == expected
