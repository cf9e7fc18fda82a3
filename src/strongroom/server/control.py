"""The admin's line to a running server: a Unix socket in the data folder (mode 0600).

`strongroom-admin gc` must run inside the server while it runs, because only the server knows
which backups are in progress (store/gc.py deletes nothing such a backup may still use). One
JSON object per line each way: {"op": "gc" | "forget", "user": NAME, "dry_run": B} ("forget"
applies the user's retention policy first), or {"op": "end-sessions", "user_id": ID, "reason":
TEXT} after the admin changed or deleted an account.
With no server listening, the admin tool runs the same GC itself under the store's writer lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StrongroomError
from ..retention import Policy
from .stores import UserStore, decide
from .userdb import User

if TYPE_CHECKING:
    from .context import ServerContext

log = logging.getLogger("strongroom.server")

SOCKET_NAME = "control.sock"
_MAX_LINE = 64 * 1024


async def serve_control(ctx: ServerContext) -> asyncio.AbstractServer | None:
    path = ctx.datadir.root / SOCKET_NAME
    if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - Windows
        return None
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a server that was killed
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: _handle(ctx, r, w), path=str(path), limit=_MAX_LINE
        )
    except OSError as exc:  # e.g. a path longer than the system allows
        log.warning(
            "admin socket %s not available (%s); admin gc needs a stopped server", path, exc
        )
        return None
    os.chmod(path, 0o600)
    return server


async def _handle(
    ctx: ServerContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), 30)
        try:
            answer = await _run(ctx, json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        except StrongroomError as exc:
            answer = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug: the admin still gets an answer, the log the details
            log.exception("admin request failed")
            answer = {"ok": False, "error": f"internal error ({type(exc).__name__})"}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
    except (OSError, TimeoutError, ValueError):
        pass
    finally:
        writer.close()


async def _run(ctx: ServerContext, request: Any) -> dict[str, Any]:
    ops = ("gc", "forget", "end-sessions", "storage-open", "end-console-sessions")
    if not isinstance(request, dict) or request.get("op") not in ops:
        raise ValueError("unknown operation")
    if request["op"] == "end-sessions":
        return await _end_sessions(ctx, request)
    if request["op"] == "end-console-sessions":
        if ctx.console_sessions is not None:
            ctx.console_sessions.close_admin(str(request["name"]))
        return {"ok": True}
    if request["op"] == "storage-open":
        return {"ok": True, "open": storage_held(ctx, str(request["storage_id"]))}
    name = request["user"]
    dry_run = bool(request.get("dry_run", False))
    user = await asyncio.to_thread(ctx.userdb.get, str(name))
    if user is None:
        raise StrongroomError(f"no user {name}")
    token = object()  # the admin's GC is not a backup: it does not hold back the horizon
    store = await asyncio.to_thread(
        functools.partial(ctx.stores.acquire, user.storage_id, token, backup=False)
    )
    try:
        removed: list[str] = []
        if request["op"] == "forget":
            removed = await asyncio.to_thread(retain, store, user, ctx.policy_for(user), dry_run)
        report = await asyncio.to_thread(lambda: store.gc(dry_run=dry_run, exclude=token))
    finally:
        await asyncio.to_thread(ctx.stores.release, user.storage_id, token)
    if not dry_run:
        await asyncio.to_thread(ctx.note_gc, user, report.reclaimed_bytes)
    log.info(
        "admin gc%s for user %r: %d bytes reclaimed, %d blobs waiting for running backups",
        " (dry run)" if dry_run else "",
        user.name,
        report.reclaimed_bytes,
        report.waiting_blobs,
    )
    return {"ok": True, "report": report.to_json(), "removed": removed}


async def _end_sessions(ctx: ServerContext, request: dict[str, Any]) -> dict[str, Any]:
    """The admin changed or deleted an account: its sessions end now, not at their next
    request, and the answer waits until they have let go of the user's storage."""
    user_id = request["user_id"]
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise TypeError("user_id must be an integer")
    reason = str(request.get("reason", "the admin changed this account"))[:200]
    ended = await ctx.end_sessions(user_id, reason, wait=30.0)
    if ended:
        log.info("admin: ended %d session(s) of user #%d: %s", ended, user_id, reason)
    # Whether nothing of this server holds the user's storage any more (a purge may go on).
    storage_id = request.get("storage_id")
    released = not ctx.sessions.get(user_id) and not (
        isinstance(storage_id, str) and await asyncio.to_thread(storage_held, ctx, storage_id)
    )
    return {"ok": True, "ended": ended, "released": released}


def storage_held(ctx: ServerContext, storage_id: str) -> bool:
    """Open on this node, or held by a live session on any node (blocking)."""
    return ctx.stores.is_open(storage_id) or ctx.backend.sessions.in_use(storage_id)


def retain(store: UserStore, user: User, policy: Policy | None, dry_run: bool) -> list[str]:
    """Apply a policy now (the server also does after each backup); IDs it removes(/would)."""
    if policy is None:
        return []
    if dry_run:
        decisions = decide(store.store.list_snapshots(), user, policy, store.registry.now_ns())
    else:
        decisions = store.apply_policy(policy, user)
    return [d.candidate.id for d in decisions if not d.keep]


def ask_server(
    data_dir: Path, request: dict[str, Any], timeout: float = 3600
) -> dict[str, Any] | None:
    """Send one request to the running server; None if no server is listening."""
    path = data_dir / SOCKET_NAME
    if not hasattr(socket, "AF_UNIX") or not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # a socket file left by a server that is gone
        sock.settimeout(timeout)
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    answer: dict[str, Any] = json.loads(data)
    return answer


def end_sessions_now(
    data_dir: Path, user_id: int, reason: str, storage_id: str | None = None
) -> bool | None:
    """Ask a running server to end the user's sessions at once. True if it did and nothing of
    it holds the user's storage any more (`storage_id`), False if something still does, None
    if no server answers (sessions then end at their next request: server/session.py)."""
    request: dict[str, Any] = {"op": "end-sessions", "user_id": user_id, "reason": reason}
    if storage_id is not None:
        request["storage_id"] = storage_id
    try:
        answer = ask_server(data_dir, request, timeout=60)
    except (OSError, ValueError):
        return None
    if answer is None or not answer.get("ok"):
        return None
    return bool(answer.get("released"))


def storage_in_use(data_dir: Path, storage_id: str) -> bool:
    """Does a running server hold this storage open? False if no server answers."""
    try:
        answer = ask_server(data_dir, {"op": "storage-open", "storage_id": storage_id}, 30)
    except (OSError, ValueError):
        return False
    return bool(answer and answer.get("ok") and answer.get("open"))


def end_console_sessions(data_dir: Path, name: str) -> None:
    """A console admin was deleted or given a new password: a running server logs them out."""
    with contextlib.suppress(OSError, ValueError):  # no server: nobody is logged in
        ask_server(data_dir, {"op": "end-console-sessions", "name": name}, 30)
