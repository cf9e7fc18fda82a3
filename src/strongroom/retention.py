"""Retention policies: which snapshots `forget --keep-*` (and the server's per-user policy) keeps.

Pure logic, no I/O. The meaning follows restic's `forget` (internal/data/snapshot_policy.go):

* Snapshots are grouped by `Candidate.group` (our callers pass restic's default "host+paths"
  key, the "series"); every group is judged on its own.
* Inside a group snapshots are sorted newest first; equal times are ordered by id, ascending
  (restic keeps the input order for ties; ordering by id makes the result independent of it).
* `last N` keeps the N newest snapshots.
* `hourly/daily/weekly/monthly/yearly N` walk the sorted list and keep a snapshot whenever its
  bucket (local year+month+day+hour, year+month+day, ISO year+ISO week, year+month, year)
  differs from the bucket of the previous snapshot *this rule* kept, until N snapshots are kept:
  the newest snapshot of each of the N most recent buckets that hold any snapshot.
* Like restic >= 0.17, the oldest snapshot of a group is also kept by every counting rule that
  still has counts left when it is reached ("this maximises the history kept"); when that is the
  only reason (its bucket was already kept) the reason reads "oldest daily snapshot" etc.
* A count of -1 means "unlimited" (restic's `--keep-daily -1`): every bucket is kept. Any other
  negative count is invalid.
* `within D` keeps every snapshot strictly after (newest snapshot of the group - D). As in
  restic the reference is the newest snapshot, not the current time; also as in restic,
  snapshots dated in the future (after `now`) are ignored when picking that reference, so one
  snapshot from a machine with a wrong clock cannot push every real snapshot out of the window.
  If every snapshot of a group lies in the future, `within` keeps all of them.
* Buckets and calendar arithmetic use local wall-clock time in `tz` (None: the system's local
  time zone, DST-aware).
* Protected snapshots are always kept, with "protected" as their first reason. Like restic's
  `--keep-tag` snapshots they still take part in the counting rules (restic does not skip
  tagged snapshots in its bucket loop): a protected snapshot that is also, say, the newest of
  its day uses up one `daily` count and gets "daily snapshot" as a further reason.
* An empty policy keeps everything, with no reasons (callers refuse to run with one).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from .errors import UsageError

__all__ = [
    "Candidate",
    "Decision",
    "Duration",
    "Policy",
    "PolicyError",
    "apply_policy",
    "parse_duration",
]

UNLIMITED = -1
_NS = 1_000_000_000
_HOUR_NS = 3600 * _NS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_DURATION_TEXT = 64


class PolicyError(UsageError, ValueError):
    """A bad duration or policy. Both a UsageError (exit code 2, one-line message for the CLI)
    and a ValueError (for code that validates stored data)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- durations


@dataclass(frozen=True)
class Duration:
    """A calendar duration such as restic's "1y5m7d2h" (weeks are stored as 7 days).

    `before(t)` subtracts years and months first, clamping the day to the length of the target
    month (Mar 31 - 1m = Feb 28/29, Feb 29 2024 - 1y = Feb 28 2023), then days on the wall
    clock (same local time of day, DST-aware), then hours as elapsed time. Go's AddDate, which
    restic uses, instead normalises the impossible date forwards (Mar 31 - 1m = "Feb 31" =
    Mar 3); clamping gives an earlier or equal cut-off, so `within` never keeps fewer snapshots
    than restic would.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        for name in ("years", "months", "days", "hours"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise PolicyError(f"duration {name} must be a whole number >= 0, not {value!r}")

    def is_zero(self) -> bool:
        return self.years == self.months == self.days == self.hours == 0

    def before(self, t: datetime) -> datetime:
        """`t` minus this duration (see the class docstring); raises OverflowError before year 1.

        Aware datetimes keep their tzinfo; naive ones are treated as plain wall-clock values.
        """
        shifted = _calendar_back(t, self)
        if not self.hours:
            return shifted
        if shifted.tzinfo is None:
            return shifted - timedelta(hours=self.hours)
        zone = shifted.tzinfo
        return (shifted.astimezone(UTC) - timedelta(hours=self.hours)).astimezone(zone)

    def __str__(self) -> str:
        parts = [
            f"{value}{unit}"
            for value, unit in (
                (self.years, "y"),
                (self.months, "m"),
                (self.days, "d"),
                (self.hours, "h"),
            )
            if value
        ]
        return "".join(parts) or "0d"


def _calendar_back(t: datetime, d: Duration) -> datetime:
    """Wall-clock `t` minus years, months (day clamped) and days; the hours are not applied."""
    months = t.year * 12 + (t.month - 1) - (d.years * 12 + d.months)
    year, month0 = divmod(months, 12)
    if year < 1:
        raise OverflowError("date value out of range")
    month = month0 + 1
    day = min(t.day, calendar.monthrange(year, month)[1])
    return t.replace(year=year, month=month, day=day) - timedelta(days=d.days)


_DURATION_RE = re.compile(r"([0-9]+)([a-z])")
_UNITS = {"y": "years", "m": "months", "w": "weeks", "d": "days", "h": "hours"}
_DURATION_HINT = "use e.g. 1y6m, 2w, 7d or 36h (units y, m, w, d, h)"


def parse_duration(text: str) -> Duration:
    """Parse restic's duration syntax, e.g. "1y5m7d2h"; "w" adds 7 days per week.

    Units may come in any order, each at most once; the total must not be zero.
    """
    if not isinstance(text, str):
        raise PolicyError(f"invalid duration {text!r}: {_DURATION_HINT}")
    stripped = text.strip()
    if len(stripped) > _MAX_DURATION_TEXT:
        raise PolicyError(f"invalid duration {stripped[:20]!r}...: too long")
    if not stripped:
        raise PolicyError(f"empty duration: {_DURATION_HINT}")
    seen: dict[str, int] = {}
    pos = 0
    while pos < len(stripped):
        m = _DURATION_RE.match(stripped, pos)
        if m is None:
            raise PolicyError(f"invalid duration {stripped!r}: {_DURATION_HINT}")
        number, unit = m.groups()
        if unit not in _UNITS:
            raise PolicyError(
                f"invalid duration {stripped!r}: unknown unit {unit!r}; {_DURATION_HINT}"
            )
        if unit in seen:
            raise PolicyError(f"invalid duration {stripped!r}: unit {unit!r} given twice")
        seen[unit] = int(number)
        pos = m.end()
    duration = Duration(
        years=seen.get("y", 0),
        months=seen.get("m", 0),
        days=seen.get("d", 0) + 7 * seen.get("w", 0),
        hours=seen.get("h", 0),
    )
    if duration.is_zero():
        raise PolicyError(f"invalid duration {stripped!r}: must be longer than zero")
    return duration


# --------------------------------------------------------------------------- policies

_COUNT_FIELDS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_JSON_FIELDS = (*_COUNT_FIELDS, "within")


@dataclass(frozen=True)
class Policy:
    """What to keep. Counts are >= 0, or -1 for "unlimited"; `within` is None or non-zero."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None

    def __post_init__(self) -> None:
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value):
                raise PolicyError(f"keep-{name} must be a whole number, not {value!r}")
            if value < UNLIMITED:
                raise PolicyError(f"keep-{name} must be >= 0, or -1 for unlimited, not {value}")
        if self.within is not None:
            if not isinstance(self.within, Duration):
                raise PolicyError(f"keep-within must be a duration, not {self.within!r}")
            if self.within.is_zero():
                raise PolicyError("keep-within must be longer than zero")

    def is_empty(self) -> bool:
        return self.within is None and all(getattr(self, n) == 0 for n in _COUNT_FIELDS)

    def to_json(self) -> dict[str, Any]:
        """Only the rules that are set, e.g. {"last": 3, "daily": 7, "within": "1y"}."""
        out: dict[str, Any] = {n: getattr(self, n) for n in _COUNT_FIELDS if getattr(self, n)}
        if self.within is not None:
            out["within"] = str(self.within)
        return out

    @staticmethod
    def from_json(obj: Any) -> Policy:
        """The inverse of to_json. Missing keys mean "not set"; unknown keys are refused."""
        if not isinstance(obj, Mapping):
            raise PolicyError(f"a retention policy must be a JSON object, not {type(obj).__name__}")
        unknown = sorted(str(k) for k in obj if k not in _JSON_FIELDS)
        if unknown:
            raise PolicyError(f"unknown retention policy field(s): {', '.join(unknown)}")
        counts: dict[str, int] = {}
        for name in _COUNT_FIELDS:
            value = obj.get(name, 0)
            if not _is_int(value):
                raise PolicyError(f"keep-{name} must be a whole number, not {value!r}")
            counts[name] = value
        within_text = obj.get("within")
        within = None
        if within_text is not None:
            if not isinstance(within_text, str):
                raise PolicyError(f"keep-within must be a duration string, not {within_text!r}")
            within = parse_duration(within_text)
        return Policy(
            last=counts["last"],
            hourly=counts["hourly"],
            daily=counts["daily"],
            weekly=counts["weekly"],
            monthly=counts["monthly"],
            yearly=counts["yearly"],
            within=within,
        )

    def describe(self) -> str:
        """One line for humans, e.g. "keep last 3, daily 7, within 1y"."""
        if self.is_empty():
            return "keep everything (empty policy)"
        parts = []
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if value == UNLIMITED:
                parts.append("all" if name == "last" else f"all {name}")
            elif value:
                parts.append(f"{name} {value}")
        if self.within is not None:
            parts.append(f"within {self.within}")
        return "keep " + ", ".join(parts)


# --------------------------------------------------------------------------- applying


@dataclass(frozen=True)
class Candidate:
    """One snapshot as the policy sees it: an id, a time, its series and a protected flag."""

    id: str
    time_ns: int
    group: str = ""
    protected: bool = False


@dataclass
class Decision:
    candidate: Candidate
    keep: bool
    reasons: list[str]


_Bucketer = Callable[[datetime, int], object]

_RULES: tuple[tuple[str, str, _Bucketer], ...] = (
    ("last", "last snapshot", lambda _w, nr: nr),
    ("hourly", "hourly snapshot", lambda w, _nr: (w.year, w.month, w.day, w.hour)),
    ("daily", "daily snapshot", lambda w, _nr: (w.year, w.month, w.day)),
    ("weekly", "weekly snapshot", lambda w, _nr: tuple(w.isocalendar())[:2]),
    ("monthly", "monthly snapshot", lambda w, _nr: (w.year, w.month)),
    ("yearly", "yearly snapshot", lambda w, _nr: w.year),
)


def _wall_clock(seconds: int, tz: tzinfo | None) -> datetime:
    """Naive local wall-clock time of a Unix time, in `tz` or (None) the system's zone."""
    try:
        if tz is None:
            return datetime.fromtimestamp(seconds)
        return datetime.fromtimestamp(seconds, tz).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError) as e:
        raise ValueError(f"snapshot time {seconds} s is out of range") from e


def _within_cutoff_ns(latest_ns: int, within: Duration, tz: tzinfo | None) -> int | None:
    """latest - within, in ns; None when that lies before year 1 (everything is within)."""
    seconds, rest_ns = divmod(latest_ns, _NS)
    try:
        shifted = _calendar_back(_wall_clock(seconds, tz), within)
        if tz is None:
            cut_seconds = int(shifted.timestamp())
        else:
            cut_seconds = (shifted.replace(tzinfo=tz) - _EPOCH) // timedelta(seconds=1)
    except (OverflowError, OSError, ValueError):
        return None
    return cut_seconds * _NS + rest_ns - within.hours * _HOUR_NS


def _judge_group(
    members: list[int],
    candidates: Sequence[Candidate],
    policy: Policy,
    tz: tzinfo | None,
    now_ns: int,
) -> dict[int, list[str]]:
    """Reasons for every kept candidate (by index) of one group; absent = remove."""
    order = sorted(members, key=lambda i: (-candidates[i].time_ns, candidates[i].id, i))
    walls = [_wall_clock(candidates[i].time_ns // _NS, tz) for i in order]

    cutoff_ns: int | None = None
    within_reason = ""
    if policy.within is not None:
        within_reason = f"within {policy.within}"
        past = [candidates[i].time_ns for i in order if candidates[i].time_ns < now_ns]
        cutoff_ns = _within_cutoff_ns(max(past), policy.within, tz) if past else None

    left = {name: getattr(policy, name) for name, _, _ in _RULES}
    last_bucket: dict[str, object] = {}
    oldest = len(order) - 1
    kept: dict[int, list[str]] = {}
    for nr, idx in enumerate(order):
        cand = candidates[idx]
        reasons: list[str] = []
        if cand.protected:
            reasons.append("protected")
        if policy.within is not None and (cutoff_ns is None or cand.time_ns > cutoff_ns):
            reasons.append(within_reason)
        for name, reason, bucketer in _RULES:
            if left[name] == 0:
                continue
            bucket = bucketer(walls[nr], nr)
            seen = name in last_bucket and last_bucket[name] == bucket
            if seen and nr != oldest:
                continue
            last_bucket[name] = bucket
            if left[name] > 0:
                left[name] -= 1
            reasons.append(f"oldest {reason}" if seen else reason)
        if reasons:
            kept[idx] = reasons
    return kept


def apply_policy(
    candidates: Sequence[Candidate],
    policy: Policy,
    tz: tzinfo | None = None,
    *,
    now_ns: int | None = None,
) -> list[Decision]:
    """Decide, for every candidate, whether `policy` keeps it and why (see the module docstring).

    The result is in the order of `candidates`. `now_ns` (default: the current time) only
    matters for `within`: snapshots after it are not used as the "newest snapshot" reference.
    """
    if policy.is_empty():
        return [Decision(c, True, []) for c in candidates]
    if now_ns is None:
        now_ns = time.time_ns()
    groups: dict[str, list[int]] = {}
    for i, cand in enumerate(candidates):
        groups.setdefault(cand.group, []).append(i)
    kept: dict[int, list[str]] = {}
    for members in groups.values():
        kept.update(_judge_group(members, candidates, policy, tz, now_ns))
    return [Decision(c, i in kept, kept.get(i, [])) for i, c in enumerate(candidates)]
