"""Removing a deleted user's storage for good, safely against a crash half-way.

`strongroom-admin user delete --purge-data` deletes the user's row and queues their storage ID
in one transaction; then the running server ends the user's sessions (which close the store),
and the folder is renamed out of the way (atomic) and removed. Whatever a crash interrupts,
the queue still names it: the next admin delete or server start finishes the job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable

from ..durable import fsync_dir
from .datadir import DataDir
from .userdb import UserDB

TRASH_PREFIX = ".purge-"


def finish_purges(
    datadir: DataDir, db: UserDB, in_use: Callable[[str], bool] = lambda _sid: False
) -> list[str]:
    """Remove every queued storage folder that is not `in_use` (by a running server); returns
    the storage IDs done."""
    done = []
    for storage_id in db.pending_purges():
        if in_use(storage_id):
            continue
        path = datadir.storage_path(storage_id)  # validates the ID: nothing outside storage/
        trash = datadir.storage_root / f"{TRASH_PREFIX}{storage_id}"
        if path.exists():
            os.replace(path, trash)  # one step: the store never looks half-removed to anyone
            fsync_dir(datadir.storage_root)
        if trash.exists():
            shutil.rmtree(trash)
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(datadir.storage_root)
        db.purge_done(storage_id)
        done.append(storage_id)
    return done
