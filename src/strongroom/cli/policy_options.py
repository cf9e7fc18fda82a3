"""The --keep-* options, shared by `strongroom forget` and `strongroom-admin user set/policy`."""

from __future__ import annotations

from typing import Any

import click

from ..retention import Policy, parse_duration

_KEEP = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def policy_options(func: Any) -> Any:
    for name in reversed(_KEEP):
        func = click.option(
            f"--keep-{name}",
            type=click.IntRange(min=-1),
            default=0,
            metavar="N",
            help=f"Keep the {name} N snapshots (-1: all)."
            if name == "last"
            else f"Keep the newest snapshot of each of the last N {_unit(name)}s (-1: all).",
        )(func)
    return click.option(
        "--keep-within",
        default=None,
        metavar="DURATION",
        help="Keep every snapshot within DURATION (e.g. 1y6m, 30d, 12h) of the newest one.",
    )(func)


def _unit(name: str) -> str:
    return {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month"}.get(
        name, "year"
    )


def policy_from(options: dict[str, Any]) -> Policy:
    within = options.pop("keep_within", None)
    return Policy(
        **{name: options.pop(f"keep_{name}") for name in _KEEP},
        within=None if within is None else parse_duration(within),
    )
