"""Removing a deleted user's storage for good, safely against a crash half-way.

`strongroom-admin user delete --purge-data` deletes the user's row and queues their storage ID
in one transaction; then the running server (every node, in scale-out mode) ends the user's
sessions, which let go of the store, and the storage is removed (embedded: the folder renamed
out of the way, atomically, then deleted; scale-out: the objects, then the index schema).
Whatever a crash interrupts, the queue still names it: the next admin delete or server start
finishes the job.
"""

from __future__ import annotations

from collections.abc import Callable

from .backend import Storage
from .userdb import UserDB


def finish_purges(
    storage: Storage, db: UserDB, in_use: Callable[[str], bool] = lambda _sid: False
) -> list[str]:
    """Remove every queued storage that is not `in_use` (by a running server); returns the
    storage IDs done."""
    done = []
    for storage_id in db.pending_purges():
        if in_use(storage_id):
            continue
        storage.remove(storage_id)
        db.purge_done(storage_id)
        done.append(storage_id)
    return done
