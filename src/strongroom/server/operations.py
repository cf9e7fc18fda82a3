"""What an admin does to accounts on a running server, with the same rules as the admin tool:
used by the web console (and the control socket), so a click and a command behave alike.

Every function is blocking (database and storage work): call it from a thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..crypto import KdfParams
from ..store.scrub import scrub
from .accounts import add_user, login_material
from .config import default_kdf
from .control import retain, storage_held
from .purge import finish_purges
from .runs import record_scrub
from .userdb import User

if TYPE_CHECKING:
    from .context import ServerContext


def reset_kdf(user: User) -> KdfParams:
    """An admin reset never lowers an account's cost: its clients refuse less than they used."""
    floor = default_kdf()
    return KdfParams(
        memory_kib=max(floor.memory_kib, user.kdf.memory_kib),
        iterations=max(floor.iterations, user.kdf.iterations),
        lanes=floor.lanes,
    )


def create_user(ctx: ServerContext, name: str, password: bytes, **settings: Any) -> User:
    return add_user(ctx.backend.storage, ctx.userdb, name, password, kdf=default_kdf(), **settings)


def reset_password(ctx: ServerContext, user: User, password: bytes) -> None:
    """New login verifier, must-change flag; the generation moves (sessions end: the caller
    ends them on the loop)."""
    kdf = reset_kdf(user)
    salt, verifier = login_material(password, kdf)
    ctx.userdb.set_login(user.id, salt=salt, kdf=kdf, auth_hash=verifier, must_change=True)


def run_gc(ctx: ServerContext, user: User) -> dict[str, Any]:
    """GC inside the server (it knows the sessions), as `strongroom-admin gc` does."""
    token = object()
    store = ctx.stores.acquire(user.storage_id, token, backup=False)
    try:
        report = store.gc(exclude=token)
    finally:
        ctx.stores.release(user.storage_id, token)
    ctx.note_gc(user, report.reclaimed_bytes)
    return report.to_json()


def apply_retention(ctx: ServerContext, user: User) -> list[str]:
    token = object()
    store = ctx.stores.acquire(user.storage_id, token, backup=False)
    try:
        return retain(store, user, ctx.policy_for(user), dry_run=False)
    finally:
        ctx.stores.release(user.storage_id, token)


def run_scrub(ctx: ServerContext, user: User) -> dict[str, Any]:
    """Read every pack of the account and check it (no key); the result is kept for the
    dashboard and the alerts."""
    store = ctx.backend.storage.open(user.storage_id, writer=False)
    try:
        report = scrub(store).to_json()
    finally:
        store.close()
    record_scrub(ctx.userdb, user, report)
    return report


def delete_user(ctx: ServerContext, user: User, *, purge: bool) -> bool:
    """Delete the row (and queue the storage with `purge`); the caller has ended the sessions.
    Returns whether the storage was removed now (not when something still holds it)."""
    ctx.userdb.delete(user.name, purge=purge)
    ctx.ops.forget_user(user.id)
    if not purge:
        return False
    done = finish_purges(ctx.backend.storage, ctx.userdb, lambda sid: storage_held(ctx, sid))
    return user.storage_id in done


def snapshot_sizes(ctx: ServerContext, user: User) -> dict[str, int]:
    """Stored bytes each snapshot references (its manifest's blobs), by snapshot ID."""
    if not ctx.backend.storage.exists(user.storage_id):
        return {}
    store = ctx.backend.storage.open(user.storage_id, writer=False)
    try:
        rows = store.query(
            "SELECT s.snap_id, COALESCE(SUM(b.length), 0) FROM snapshots s "
            "LEFT JOIN snapshot_blobs sb ON sb.snapshot = s.id "
            "LEFT JOIN blobs b ON b.id = sb.blob GROUP BY s.id"
        )
    finally:
        store.close()
    return {str(r[0]): int(r[1]) for r in rows}


def set_protected(ctx: ServerContext, user: User, snap_id: str, protected: bool) -> bool:
    token = object()
    store = ctx.stores.acquire(user.storage_id, token, backup=False)
    try:
        return store.store.set_protected(snap_id, protected)
    finally:
        ctx.stores.release(user.storage_id, token)
