"""An exclusive writer lock on a repository, released by the OS if the process dies."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import IO

from ..errors import RepositoryError


class WriterLock:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._fh: IO[bytes] | None = None

    def acquire(self) -> None:
        fh = open(self._path, "a+b")  # noqa: SIM115 - held for the lock's lifetime
        try:
            _lock_nonblocking(fh)
        except OSError:
            fh.close()
            raise RepositoryError(
                f"repository {self._path.parent} is in use by another backup or forget; "
                "wait for it to finish"
            ) from None
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the lock on every platform
            self._fh = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _lock_nonblocking(fh: IO[bytes]) -> None:
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
