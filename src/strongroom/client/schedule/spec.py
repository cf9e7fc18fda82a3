"""When a scheduled backup runs: `--every 1h`, `--daily 02:30` or a systemd `--calendar` spec.

Pure logic (parsing, the systemd timer directives, the next run's time), shared by every
platform's generator and by `schedule status`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ...errors import UsageError

MIN_EVERY = 300  # seconds: more often than every 5 minutes is a mistake, not a schedule
MAX_EVERY = 31 * 86400  # Task Scheduler's repetition limit, and plenty anyway
MAX_RANDOM_DELAY = 6 * 3600

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(min|s|m|h|d|w)")


def parse_duration(text: str, what: str, *, allow_fraction: bool = False) -> float:
    """'90s', '15m', '1h30m', '2d', '1w'; a bare number is seconds."""
    s = text.strip().lower()
    if not s:
        raise UsageError(f"{what}: empty duration (use e.g. 30m, 1h, 1d)")
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        total = float(s)
    else:
        pos, total = 0, 0.0
        for m in _SPAN.finditer(s):
            if s[pos : m.start()].strip():
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos == 0 or s[pos:].strip():
            raise UsageError(f"{what} {text!r}: use a duration like 30m, 1h, 1h30m, 1d or 1w")
    if not allow_fraction and total != int(total):
        raise UsageError(f"{what} {text!r}: use whole seconds")
    return total


def format_span(seconds: float) -> str:
    """Seconds as a systemd time span that people read too: '1d 2h', '15min', '0.5s'."""
    if seconds != int(seconds) or seconds < 1:
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for name, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n}{name}")
    return " ".join(parts)


def iso_duration(seconds: int) -> str:
    """ISO 8601 duration (Task Scheduler): 'PT1H', 'P1D', 'PT15M', 'P1DT12H'."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "") if seconds else "PT0S"


_CAL_WORDS = {
    "minutely",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "annually",
    "quarterly",
    "semiannually",
    "utc",
    *("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
    *("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
}


def _rough_calendar_check(spec: str) -> bool:
    """Without systemd-analyze: the characters and words an OnCalendar spec can hold."""
    if not re.fullmatch(r"[A-Za-z0-9*:/,.~+_ -]+", spec):
        return False
    for word in spec.replace(",", " ").split():
        if "/" in word and re.fullmatch(r"[A-Za-z_]+(/[A-Za-z_+-]+)+", word):
            continue  # a time zone such as Europe/Berlin
        for part in re.findall(r"[A-Za-z]+", word):
            if part.lower() not in _CAL_WORDS:
                return False
    return bool(re.search(r"[0-9*]", spec)) or spec.strip().lower() in _CAL_WORDS


def _analyze_calendar(spec: str) -> subprocess.CompletedProcess[str] | None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return None
    try:
        return subprocess.run(
            [analyze, "calendar", "--", spec],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_calendar(spec: str) -> str:
    """A systemd OnCalendar spec, checked by `systemd-analyze calendar` where it exists."""
    spec = spec.strip()
    example = "(e.g. 'Mon..Fri 12:30', '*-*-* 04:00:00', 'hourly')"
    if not spec or len(spec) > 200 or not spec.isprintable() or "%" in spec:
        raise UsageError(f"--calendar {spec!r}: not a systemd calendar spec {example}")
    proc = _analyze_calendar(spec)
    if proc is None:
        if not _rough_calendar_check(spec):
            raise UsageError(f"--calendar {spec!r}: not a systemd calendar spec {example}")
    elif proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        why = lines[-1] if lines else "not a valid spec"
        raise UsageError(f"--calendar {spec!r}: systemd-analyze says: {why} {example}")
    return spec


def systemd_next_elapse(spec: str) -> str | None:
    """The next time `spec` elapses, as systemd-analyze prints it (None where unknown)."""
    proc = _analyze_calendar(spec)
    for line in proc.stdout.splitlines() if proc is not None else []:
        key, _, value = line.strip().partition(":")
        if key == "Next elapse":
            return value.strip() or None
    return None


@dataclass(frozen=True)
class Schedule:
    """One of: every N seconds, daily at HH:MM, or a systemd calendar spec."""

    every: int | None = None
    daily: str | None = None  # "HH:MM"
    calendar: str | None = None
    random_delay: int = 600

    # ---- parsing ------------------------------------------------------------------------------

    @staticmethod
    def from_options(
        every: str | None,
        daily: str | None,
        calendar: str | None,
        random_delay: str | None,
    ) -> Schedule:
        if sum(x is not None for x in (every, daily, calendar)) > 1:
            raise UsageError("give only one of --every, --daily and --calendar")
        delay = (
            None if random_delay is None else int(parse_duration(random_delay, "--random-delay"))
        )
        if delay is not None and not 0 <= delay <= MAX_RANDOM_DELAY:
            raise UsageError("--random-delay: between 0 and 6h")
        if every is not None:
            secs = int(parse_duration(every, "--every"))
            if not MIN_EVERY <= secs <= MAX_EVERY:
                raise UsageError("--every: between 5m and 31d")
            if secs % 60:
                raise UsageError("--every: use whole minutes")
            default = min(600, secs // 10)
            return Schedule(every=secs, random_delay=default if delay is None else delay)
        if calendar is not None:
            spec = check_calendar(calendar)
            return Schedule(calendar=spec, random_delay=300 if delay is None else delay)
        hhmm = _parse_daily(daily if daily is not None else "02:30")
        return Schedule(daily=hhmm, random_delay=600 if delay is None else delay)

    def to_json(self) -> dict[str, Any]:
        return {
            "every": self.every,
            "daily": self.daily,
            "calendar": self.calendar,
            "random_delay": self.random_delay,
        }

    @staticmethod
    def from_json(raw: Any) -> Schedule:
        if not isinstance(raw, dict):
            raise ValueError("schedule is not an object")
        every, daily, cal = raw.get("every"), raw.get("daily"), raw.get("calendar")
        delay = raw.get("random_delay", 600)
        if not isinstance(delay, int):
            raise ValueError("bad random_delay")
        if isinstance(every, int):
            return Schedule(every=every, random_delay=delay)
        if isinstance(daily, str):
            return Schedule(daily=_parse_daily(daily), random_delay=delay)
        if isinstance(cal, str) and cal.isprintable() and "%" not in cal:
            return Schedule(calendar=cal, random_delay=delay)
        raise ValueError("no schedule")

    # ---- views --------------------------------------------------------------------------------

    def describe(self) -> str:
        if self.every is not None:
            text = f"every {format_span(self.every)}"
        elif self.daily is not None:
            text = f"daily at {self.daily}"
        else:
            text = f"on calendar {self.calendar}"
        if self.random_delay:
            text += f" (random delay up to {format_span(self.random_delay)})"
        return text

    @property
    def daily_time(self) -> tuple[int, int] | None:
        if self.daily is None:
            return None
        hh, mm = self.daily.split(":")
        return int(hh), int(mm)

    def on_calendar(self) -> str | None:
        """The OnCalendar= value, or None when the interval does not fit a calendar (then the
        timer is monotonic: OnActiveSec= and OnUnitActiveSec=)."""
        if self.calendar is not None:
            return self.calendar
        if self.daily is not None:
            return f"*-*-* {self.daily}:00"
        assert self.every is not None
        secs = self.every
        if secs == 86400:
            return "*-*-* 00:00:00"
        if secs == 7 * 86400:
            return "Mon *-*-* 00:00:00"
        if secs % 3600 == 0 and 24 % (secs // 3600) == 0:
            hours = secs // 3600
            return "*-*-* *:00:00" if hours == 1 else f"*-*-* 00/{hours}:00:00"
        if secs < 3600 and 60 % (secs // 60) == 0:
            return f"*-*-* *:00/{secs // 60}:00"
        return None

    def next_run(self, now: datetime, last_run: datetime | None = None) -> datetime | None:
        """The next run's time, computed (without the random delay); None where unknown."""
        now = now.replace(microsecond=0)
        if self.daily_time is not None:
            hh, mm = self.daily_time
            at = now.replace(hour=hh, minute=mm, second=0)
            return at if at > now else at + timedelta(days=1)
        if self.every is None:
            return None
        spec = self.on_calendar()
        secs = self.every
        if spec is None:
            return last_run + timedelta(seconds=secs) if last_run is not None else None
        midnight = now.replace(hour=0, minute=0, second=0)
        if secs == 7 * 86400:
            monday = midnight - timedelta(days=midnight.weekday())
            return monday + timedelta(days=7)
        step = timedelta(seconds=secs)
        elapsed = now - midnight
        return midnight + step * (elapsed // step + 1)


def _parse_daily(text: str) -> str:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", text)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise UsageError(f"--daily {text!r}: use a time of day like 02:30 (24-hour clock)")
    return f"{int(m.group(1)):02d}:{m.group(2)}"
