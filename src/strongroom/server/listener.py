"""Scale-out: account changes made on any node (or by the admin tool anywhere) end the
affected sessions on this node at once.

UserDB announces every change of an account's login, keys or append-only setting, and its
deletion, with `pg_notify` in the transaction that makes it (delivered at commit). Each node
LISTENs on a connection of its own, in a thread; for each notice it reads the account again and
ends those of its sessions that were admitted under an older generation (a user's own password
change keeps the session that made it). While the connection is down notices are lost; the
generation every request re-reads still ends such sessions at their next request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

from .logins import ACCOUNT_CHANGED
from .userdb import ACCOUNT_CHANNEL

if TYPE_CHECKING:
    from .context import ServerContext

log = logging.getLogger("strongroom.server")

RECONNECT_S = 2.0


class AccountListener:
    def __init__(self, ctx: ServerContext, conninfo: str) -> None:
        self.ctx = ctx
        self.conninfo = conninfo
        self.loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="account-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {ACCOUNT_CHANNEL}")
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            if notice.payload.isdigit():
                                self._changed(int(notice.payload))
            except psycopg.Error:
                self._stop.wait(RECONNECT_S)  # PostgreSQL away: the heartbeat says so

    def _changed(self, user_id: int) -> None:
        if user_id in self.ctx.sessions:  # read on the loop's thread below; a hint here
            asyncio.run_coroutine_threadsafe(end_outdated(self.ctx, user_id), self.loop)


async def end_outdated(ctx: ServerContext, user_id: int) -> int:
    """End this node's sessions of the account that its current row no longer admits."""
    user = await asyncio.to_thread(ctx.userdb.get_by_id, user_id)
    ended = 0
    for session in list(ctx.sessions.get(user_id, set())):
        if user is None or session.user is None or user.storage_id != session.user.storage_id:
            session.end("this account was deleted")
        elif session.generation < user.generation:
            # Only older: a session whose own password change is in flight already counts
            # the next generation, and a late notice of an earlier change (read before that
            # change commits) must not end it.
            session.end(ACCOUNT_CHANGED)
        else:
            continue
        ended += 1
    if ended:
        log.info(
            "ended %d session(s) of user #%d: the account changed on another node", ended, user_id
        )
    return ended
