"""What every way of logging in to a user account shares: the backup protocol's sessions
(server/session.py) and the user's restore page (server/web/restore_api.py).

- `check_auth_key`: the auth key checked under the server's one FailureThrottle (the same
  counts per folded account name and per address group, whichever door a guess comes in by),
  against the same verifier, with the same log line and metric for a failure.
- `account_change`: whether a session's account was deleted or changed (the generation moved)
  since it logged in, checked before every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..names import fold_name
from . import auth
from .userdb import User

if TYPE_CHECKING:
    from .context import ServerContext

log = logging.getLogger("strongroom.server")

ThreadRunner = Callable[..., Awaitable[Any]]

ACCOUNT_CHANGED = (
    "this account's password, keys or append-only setting changed since you logged in; log in again"
)
ACCOUNT_GONE = "this account was deleted"


async def check_auth_key(
    ctx: ServerContext,
    name: str,
    auth_key: bytes,
    group: str,
    address: str,
    thread: ThreadRunner = asyncio.to_thread,
) -> User | None:
    """The user if the auth key is right, else None (after the throttle's delay). Raises
    throttle.LoginRefused while the name or the address is locked out. `thread` runs the
    database lookup (a session passes its own, shielded runner)."""
    async with ctx.throttle.attempt(fold_name(name), group) as attempt:
        user: User | None = await thread(ctx.userdb.get, name)
        if not auth.verify(user, auth_key) or user is None:
            attempt.failed()
            ctx.metrics.auth_failures.inc()
            log.warning("%s: login failed for user %r", address, name)
            return None
        attempt.succeeded()
        return user


def account_change(now: User | None, storage_id: str, generation: int) -> str | None:
    """Why a session that logged in to `storage_id` at `generation` must end, or None."""
    if now is None or now.storage_id != storage_id:
        return ACCOUNT_GONE
    if now.generation != generation:
        return ACCOUNT_CHANGED
    return None
