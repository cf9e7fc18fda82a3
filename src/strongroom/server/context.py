"""What every part of a running server shares: configuration, databases, stores, limits,
metrics and the logged-in sessions.

Its own module, importing none of the parts that use it (the listener, the protocol sessions,
the control socket, the web console), so that they can all name it without an import cycle;
the sessions it keeps are seen through the small protocols below.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from .. import __version__
from ..retention import Policy
from .backend import Backend
from .config import ServerConfig
from .datadir import DataDir
from .limits import CommitRate, ConnectionLimits
from .metrics import Metrics
from .nodes import SharedCommitRate
from .opsdb import OpsDB
from .policy import policy_for
from .runs import record_run
from .shared_throttle import SharedThrottle
from .stores import StoreRegistry
from .throttle import FailureThrottle
from .userdb import User, UserDB
from .web.auth import Sessions


class Endable(Protocol):
    """A logged-in protocol session (server/session.py), as the context sees it."""

    @property
    def user(self) -> User | None:
        """Who logged in (None before the login)."""
        ...

    @property
    def generation(self) -> int:
        """The account's generation the session was admitted under (or made itself)."""
        ...

    def end(self, reason: str) -> asyncio.Event:
        """Tell it to end; the event is set once it let go of the user's storage."""
        ...


class UserSessions(Protocol):
    """The restore page's sessions (server/web/restore_api.py), as the context sees them."""

    def end_user(self, user_id: int) -> list[asyncio.Event]:
        """End the user's sessions; an event per session, set once it let go of the storage."""
        ...


@dataclass
class ServerContext:
    config: ServerConfig
    backend: Backend
    secret: bytes
    node_id: str = ""  # scale-out: this node's row in the nodes and sessions tables
    stores: StoreRegistry = field(init=False)
    throttle: FailureThrottle | SharedThrottle = field(init=False)
    version: str = __version__
    connections: set[asyncio.Task[None]] = field(default_factory=set)
    # Logged-in sessions by user ID, so an account change can end them at once.
    sessions: dict[int, set[Endable]] = field(default_factory=dict)
    staged: dict[int, int] = field(default_factory=dict)  # user ID -> manifest bytes on disk
    metrics: Metrics = field(default_factory=Metrics)
    limits: ConnectionLimits = field(init=False)
    commits: CommitRate | SharedCommitRate = field(init=False)
    refusing: int = 0
    console_sessions: Sessions | None = None  # the web console's, when it runs
    user_web: UserSessions | None = None  # the users' restore page's sessions, when it runs

    def __post_init__(self) -> None:
        cfg = self.config
        self.limits = ConnectionLimits(
            cfg.max_connections, cfg.max_unauthenticated_per_address, cfg.max_connections_per_user
        )
        backend = self.backend
        self.stores = StoreRegistry(backend.storage, backend.sessions, self.node_id)
        self.throttle = self.make_throttle()
        if backend.kind == "scaleout":
            self.commits = SharedCommitRate(backend.db, cfg.max_commits_per_hour)
        else:
            self.commits = CommitRate(cfg.max_commits_per_hour)

    @property
    def datadir(self) -> DataDir:
        return self.backend.datadir

    @property
    def userdb(self) -> UserDB:
        return self.backend.userdb

    @property
    def ops(self) -> OpsDB:
        return self.backend.ops

    def make_throttle(self, prefix: str = "") -> FailureThrottle | SharedThrottle:
        """Login throttling: in memory on one node, in PostgreSQL across nodes."""
        cfg = self.config
        rules = {
            "free_attempts": cfg.login_free_attempts,
            "max_delay": cfg.login_max_delay,
            "lockout_after": cfg.login_lockout_after,
            "lockout_base": cfg.login_lockout,
        }
        if self.backend.kind == "scaleout":
            return SharedThrottle(self.backend.db, prefix=prefix, **rules)
        return FailureThrottle(**rules)

    def policy_for(self, user: User) -> Policy | None:
        return policy_for(self.userdb, user)

    def note_gc(self, user: User, reclaimed_bytes: int) -> None:
        """A GC ran for the user (blocking: call from a thread)."""
        self.metrics.gc_runs.inc()
        self.metrics.gc_reclaimed.inc(reclaimed_bytes)
        record_run(self.userdb, "gc", user, f"{reclaimed_bytes} bytes reclaimed", True)

    async def end_sessions(
        self, user_id: int, reason: str, *, keep: Endable | None = None, wait: float = 10.0
    ) -> int:
        """End every session of the user but `keep` (on the loop's thread) and wait, at most
        `wait` seconds, until they have let go of the user's storage."""
        ending = [s for s in self.sessions.get(user_id, set()) if s is not keep]
        released = [s.end(reason) for s in ending]
        if self.user_web is not None:  # the restore page's sessions of the user end too
            released += self.user_web.end_user(user_id)
        if released and wait > 0:
            waiting = [asyncio.create_task(event.wait()) for event in released]
            _done, pending = await asyncio.wait(waiting, timeout=wait)
            for task in pending:
                task.cancel()
        return len(released)
