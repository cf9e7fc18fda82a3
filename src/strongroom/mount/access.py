"""The mount's line to the repository: one connection, opened again when it is lost.

A mount lives for hours; the server drops a connection that stays idle (its idle timeout) and
may restart. A request that fails because the connection is gone is retried once on a new
one, made with the password read at start (held in memory, as the keys are); after a failed
login, requests fail at once for a few seconds instead of each waiting for a dead server.
Anything else, a damaged blob or a refusal by the server, is the caller's error as it stands.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import IntegrityError, StrongroomError
from ..repository import Repository
from ..store import SnapshotRow

T = TypeVar("T")

RETRY_AFTER = 5.0  # seconds before another login after one failed


class RepoAccess:
    def __init__(
        self,
        repo: Repository,
        reopen: Callable[[], Repository] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self._repo = repo
        self._reopen = reopen
        self.warn = warn or (lambda _msg: None)
        self._lock = threading.Lock()
        self.reconnects = 0
        self._failed: tuple[float, StrongroomError] | None = None  # the last failed login
        self._closed: Repository | None = None  # closed by us; a login must replace it

    @property
    def repo(self) -> Repository:
        return self._repo

    def call(self, fn: Callable[[Repository], T]) -> T:
        repo = self._repo
        if repo is self._closed:  # the last login failed: try again, never use the closed one
            return fn(self._reconnect(repo))
        try:
            return fn(repo)
        except IntegrityError:
            raise
        except StrongroomError:
            if self._reopen is None or not _lost(repo):
                raise
        return fn(self._reconnect(repo))

    def _reconnect(self, old: Repository) -> Repository:
        with self._lock:
            if self._repo is not old:  # another thread has already reconnected
                return self._repo
            if self._failed is not None and time.monotonic() - self._failed[0] < RETRY_AFTER:
                raise self._failed[1]  # a server that is down: fail fast, not once per read
            assert self._reopen is not None
            if self._closed is not old:
                old.close()
                self._closed = old
            try:
                self._repo = self._reopen()
            except StrongroomError as exc:
                self._failed = (time.monotonic(), exc)
                raise
            self._failed = None
            self.reconnects += 1
            self.warn("the connection to the server was lost; logged in again")
            return self._repo

    def read_stored(self, blob_ids: list[bytes]) -> list[tuple[bytes, bytes]]:
        """The stored bytes of these blobs (all of them, or an error)."""
        return self.call(lambda r: list(r.read_blobs(blob_ids)))

    def snapshot_rows(self) -> list[SnapshotRow]:
        return self.call(lambda r: r.snapshot_rows())

    def close(self) -> None:
        with self._lock:
            self._repo.close()


def _lost(repo: Repository) -> bool:
    transport = getattr(repo, "transport", None)
    return bool(getattr(transport, "closed", False))
