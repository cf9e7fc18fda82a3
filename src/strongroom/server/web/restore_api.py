"""The user's restore page and its API (issue 13), on the console's HTTPS port.

Every key stays in the user's browser: the page (static files built from web/restore/) derives
the auth key and the KEK from the password exactly as the command-line client does, and this
module gives it only what the backup protocol gives a logged-in client: the login parameters,
the login itself (the auth key checked by the same code, under the same throttle), the key
file, the snapshot rows and blobs by ID. It never sees a password, a KEK, a data key or a
plaintext name.

No cookie carries authority here (and none is set): a login returns a random session ID that
the page keeps in memory and sends as `Authorization: Bearer …` with each request, so another
site cannot make a browser act on the user's behalf (no ambient authority, hence no CSRF). The
admin console's cookie session is a different thing and opens nothing here. Sessions end when
the account changes (its generation moves: an admin reset, a delete, a new key file), at once
through ServerContext.end_sessions, or at their next request.

Endpoints (docs/PROTOCOL.md, "The restore page"):
  POST /api/user/auth-params   {"user"}             -> salt and Argon2id cost
  POST /api/user/login         {"user","auth_key"}  -> session ID and key file
  POST /api/user/logout        (bearer)
  GET  /api/user/snapshots     (bearer)             -> snapshot rows (sealed records)
  POST /api/user/blobs         (bearer, n x 32-byte IDs) -> stream of stored blobs
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import json
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from ...errors import IntegrityError, StrongroomError
from ...protocol.messages import NAME_LIMIT
from .. import auth
from ..logins import ACCOUNT_GONE, account_change, check_auth_key
from ..stores import UserStore
from ..throttle import LoginRefused, address_group
from ..userdb import User

if TYPE_CHECKING:
    from ..context import ServerContext

log = logging.getLogger("strongroom.server")

T = TypeVar("T")

PAGE_PREFIX = "/restore"
API_PREFIX = "/api/user/"
SESSION_IDLE_S = 1800.0  # a tab left alone for 30 minutes signs in again
SESSION_MAX_S = 12 * 3600.0
MAX_SESSIONS = 1000  # all users together; the least recently used goes first
MAX_IDS = 256  # blob IDs in one read request
STREAMS_PER_SESSION = 4  # blob reads of one session at once
PART_BYTES = 4 * 1024 * 1024  # blobs read from the store per part of a streamed answer
MAX_JSON = 16 * 1024

# A blob answer is a run of records: blob ID (32) | status u8 | length u32 BE | bytes.
RECORD = struct.Struct(">32sBI")
STATUS_INTACT = 0
STATUS_ERROR = 0xFE  # ID of zeros; the bytes are a UTF-8 message; nothing follows
STATUS_END = 0xFF  # ID of zeros; the bytes are the number of blobs sent (u64 BE)
_NO_ID = bytes(32)

_CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; worker-src 'self'; frame-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".txt": "text/plain",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_user_path(path: str) -> bool:
    """Paths of the restore page and its API: not behind the admin console's login."""
    return path == PAGE_PREFIX or path.startswith((PAGE_PREFIX + "/", API_PREFIX))


class ApiError(Exception):
    """Answered as {"error": message, "code": code} with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(eq=False)
class WebSession:
    user_id: int
    name: str
    storage_id: str
    generation: int
    address: str
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    streams: int = 0
    requests: set[asyncio.Task[Any]] = field(default_factory=set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # set once no request runs


class UserWeb:
    """The restore page's sessions and request handlers."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._sessions: dict[bytes, WebSession] = {}  # SHA-256 of the session ID -> session
        self.static = Path(str(resources.files("strongroom.server.web") / "static" / "restore"))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PAGE_PREFIX, self.redirect)
        app.router.add_get(PAGE_PREFIX + "/", self.page)
        app.router.add_get(PAGE_PREFIX + "/{name}", self.asset)
        app.router.add_get(PAGE_PREFIX + "/dl/{rest:.*}", self.stale_download)
        app.router.add_post(API_PREFIX + "auth-params", self._api(self.auth_params))
        app.router.add_post(API_PREFIX + "login", self._api(self.login))
        app.router.add_post(API_PREFIX + "logout", self._api(self.logout))
        app.router.add_get(API_PREFIX + "snapshots", self._api(self.snapshots))
        app.router.add_post(API_PREFIX + "blobs", self._api(self.blobs))

    # ---- the page --------------------------------------------------------------------------

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(PAGE_PREFIX + "/")

    async def page(self, request: web.Request) -> web.StreamResponse:
        return await self._file("index.html")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        return await self._file(request.match_info["name"])

    async def stale_download(self, request: web.Request) -> web.StreamResponse:
        # Download links are answered by the page's service worker, in the browser; one that
        # reaches the server was opened without it (a reload, another tab).
        return web.Response(
            status=404,
            text="This download link works only while the restore page that made it is open; "
            "start the download again from the page.",
        )

    async def _file(self, name: str) -> web.StreamResponse:
        suffix = name[name.rfind(".") :] if "." in name else ""
        if suffix not in _TYPES or "/" in name or "\\" in name or name.startswith("."):
            raise web.HTTPNotFound(text="no such file")
        path = self.static / name
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            if name == "index.html":
                raise web.HTTPServiceUnavailable(
                    text="the restore page is not part of this installation (see web/restore/)"
                ) from None
            raise web.HTTPNotFound(text="no such file") from None
        except OSError:
            raise web.HTTPNotFound(text="no such file") from None
        return web.Response(
            body=body,
            content_type=_TYPES[suffix],
            charset="utf-8",
            headers={"Content-Security-Policy": _CSP, "Cross-Origin-Opener-Policy": "same-origin"},
        )

    # ---- plumbing --------------------------------------------------------------------------

    def _api(self, handler: Handler) -> Handler:
        """JSON errors, no tracebacks, the request tracked by its session."""

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                _check_origin(request)
                return await handler(request)
            except ApiError as exc:
                return _error(exc)
            except web.HTTPRequestEntityTooLarge:
                return _error(ApiError(413, "bad_request", "the request is too large"))
            except StrongroomError as exc:
                log.warning("web %s: %s failed: %s", request.remote, request.path, exc)
                return _error(ApiError(500, "server_error", str(exc)[:500]))

        return handle

    def _open_session(self, user: User, host: str) -> str:
        self._expire()
        per_user = sorted(
            (s for s in self._sessions.values() if s.user_id == user.id), key=lambda s: s.seen
        )
        limit = max(1, self.ctx.config.max_connections_per_user)
        for old in per_user[: max(0, len(per_user) - limit + 1)]:  # the user's oldest tabs
            self._drop(old)
        if len(self._sessions) >= MAX_SESSIONS:
            self._drop(min(self._sessions.values(), key=lambda s: s.seen))
        token = secrets.token_urlsafe(32)
        self._sessions[_digest(token)] = WebSession(
            user.id, user.name, user.storage_id, user.generation, host
        )
        return token

    def _drop(self, session: WebSession) -> None:
        for key in [k for k, s in self._sessions.items() if s is session]:
            del self._sessions[key]
        for task in list(session.requests):
            task.cancel()
        if not session.requests:
            session.ended.set()

    def _expire(self) -> None:
        now = time.monotonic()
        for session in [s for s in self._sessions.values() if _expired(s, now)]:
            self._drop(session)

    def end_user(self, user_id: int) -> list[asyncio.Event]:
        """The account changed or was deleted: its sessions end now and their requests in
        flight are cancelled; each event is set once that session let go of the storage."""
        ending = [s for s in self._sessions.values() if s.user_id == user_id]
        for session in ending:
            self._drop(session)
        return [s.ended for s in ending]

    async def _session(self, request: web.Request) -> tuple[WebSession, User]:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or len(header) > 200:
            raise ApiError(401, "no_session", "sign in first")
        session = self._sessions.get(_digest(header[7:].strip()))
        if session is None:
            raise ApiError(401, "no_session", "this session has ended; sign in again")
        now = time.monotonic()
        if _expired(session, now):
            self._drop(session)
            raise ApiError(401, "session_ended", "you were signed out after 30 minutes without use")
        session.seen = now
        user = await asyncio.to_thread(self.ctx.userdb.get_by_id, session.user_id)
        change = account_change(user, session.storage_id, session.generation)
        if change is not None or user is None:
            self._drop(session)
            log.info("web %s: session of user %r ended: %s", request.remote, session.name, change)
            code = "account_gone" if change == ACCOUNT_GONE else "session_ended"
            raise ApiError(401, code, change or ACCOUNT_GONE)
        return session, user

    async def _tracked(
        self, session: WebSession, work: Callable[[], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        session.requests.add(task)
        try:
            return await work()
        finally:
            session.requests.discard(task)
            if not session.requests and session not in self._sessions.values():
                session.ended.set()

    async def _store(self, user: User, token: object) -> UserStore:
        try:
            return await _shielded(
                functools.partial(self.ctx.stores.acquire, user.storage_id, token, user_id=user.id)
            )
        except StrongroomError as exc:
            log.warning("web: user %r: storage not available: %s", user.name, exc)
            raise ApiError(503, "server_error", str(exc)) from None

    async def _release(self, user: User, token: object) -> None:
        await _shielded(self.ctx.stores.release, user.storage_id, token)

    # ---- login -----------------------------------------------------------------------------

    async def auth_params(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        name = _name(body)
        user = await asyncio.to_thread(self.ctx.userdb.get, name)
        answer = auth.salt_for(user, name, self.ctx.secret)  # folds unknown names
        return web.json_response(
            {
                "salt": base64.b64encode(answer.salt).decode(),
                "memory_kib": answer.kdf.memory_kib,
                "iterations": answer.kdf.iterations,
                "lanes": answer.kdf.lanes,
            }
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        name = _name(body)
        try:
            auth_key = base64.b64decode(str(body.get("auth_key", "")), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_request", "the auth key is not base64") from None
        host = request.remote or "?"
        address = f"web {host}"
        try:
            # Waiting behind earlier attempts on the account or address is bounded, as a
            # protocol login's is by its deadline.
            async with asyncio.timeout(self.ctx.config.login_timeout):
                user = await check_auth_key(self.ctx, name, auth_key, address_group(host), address)
        except LoginRefused as exc:
            self.ctx.metrics.auth_failures.inc()
            log.warning(
                "%s: login for user %r refused: locked out for %.0f s after failed logins",
                address,
                name,
                exc.retry_after,
            )
            minutes = max(1, round(exc.retry_after / 60))
            raise ApiError(
                429,
                "rate_limited",
                "too many failed logins for this account or from this address; "
                f"try again in {minutes} minute(s)",
            ) from None
        except TimeoutError:
            raise ApiError(
                503, "busy", "other logins for this account are being checked; try again"
            ) from None
        if user is None:
            raise ApiError(401, "auth_failed", "wrong user name or password")
        if user.must_change_password or user.keyfile is None:
            log.info("%s: user %r must change the admin's password first", address, user.name)
            raise ApiError(
                403,
                "password_change_required",
                "your password was set by the admin: choose your own first with the strongroom "
                "program on your computer ('strongroom passwd'); this page never sets up keys",
            )
        token = self._open_session(user, host)
        log.info("%s: login ok for user %r (restore page)", address, user.name)
        return web.json_response(
            {
                "session": token,
                "user": user.name,
                "keyfile": user.keyfile.decode("utf-8", "replace"),
                "repo_id": user.storage_id,
                "append_only": user.append_only,
                "idle_timeout": SESSION_IDLE_S,
            }
        )

    async def logout(self, request: web.Request) -> web.StreamResponse:
        try:
            session, _user = await self._session(request)
        except ApiError:
            return web.json_response({"ok": True})  # already gone: nothing to end
        self._drop(session)
        log.info("web %s: user %r signed out", request.remote, session.name)
        return web.json_response({"ok": True})

    # ---- reads -----------------------------------------------------------------------------

    async def snapshots(self, request: web.Request) -> web.StreamResponse:
        session, user = await self._session(request)

        async def work() -> web.StreamResponse:
            token = object()
            store = await self._store(user, token)
            try:
                rows = await _shielded(store.snapshots)
            finally:
                await self._release(user, token)
            return web.json_response(
                {
                    "snapshots": [
                        {
                            "id": r.snap_id,
                            "time_ns": r.time_ns,
                            "received_ns": r.received_ns,
                            "record": base64.b64encode(r.record).decode(),
                            "series": r.series,
                            "protected": bool(r.protected),
                        }
                        for r in rows
                    ]
                }
            )

        return await self._tracked(session, work)

    async def blobs(self, request: web.Request) -> web.StreamResponse:
        session, user = await self._session(request)
        if request.content_type != "application/octet-stream":
            raise ApiError(400, "bad_request", "send the blob IDs as application/octet-stream")
        body = await request.read()
        if not body or len(body) % 32 or len(body) > MAX_IDS * 32:
            raise ApiError(400, "bad_request", f"send 1 to {MAX_IDS} blob IDs of 32 bytes each")
        ids = list(dict.fromkeys(body[i : i + 32] for i in range(0, len(body), 32)))
        if session.streams >= STREAMS_PER_SESSION:
            raise ApiError(429, "busy", "too many reads at once in this tab; try again")
        session.streams += 1
        try:
            return await self._tracked(session, lambda: self._send_blobs(request, user, ids))
        finally:
            session.streams -= 1

    async def _send_blobs(
        self, request: web.Request, user: User, ids: list[bytes]
    ) -> web.StreamResponse:
        token = object()
        store = await self._store(user, token)
        blobs = iter(store.read(ids))
        try:
            try:
                part = await _shielded(_next_part, blobs)
            except IntegrityError as exc:
                # Nothing sent yet: a plain error. "missing" (not stored) or "damaged".
                code = "not_found" if "missing" in str(exc) else "damaged"
                log.warning("web %s: user %r: read refused: %s", request.remote, user.name, exc)
                raise ApiError(404 if code == "not_found" else 502, code, str(exc)) from None
            response = web.StreamResponse(
                headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"}
            )
            await response.prepare(request)
            count = 0
            while part:
                count += len(part)
                data = b"".join(
                    b"".join((RECORD.pack(bid, STATUS_INTACT, len(stored)), stored))
                    for bid, stored in part
                )
                await asyncio.wait_for(response.write(data), self.ctx.config.idle_timeout)
                try:
                    part = await _shielded(_next_part, blobs)
                except IntegrityError as exc:
                    # Mid-stream: an error record ends the answer; the page stops there.
                    log.warning(
                        "web %s: user %r: blob read failed: %s", request.remote, user.name, exc
                    )
                    message = str(exc).encode()[:1000]
                    await response.write(RECORD.pack(_NO_ID, STATUS_ERROR, len(message)) + message)
                    await response.write_eof()
                    return response
            end = struct.pack(">Q", count)
            await response.write(RECORD.pack(_NO_ID, STATUS_END, len(end)) + end)
            await response.write_eof()
            return response
        finally:
            await _shielded(_close, blobs)
            await self._release(user, token)


def _expired(session: WebSession, now: float) -> bool:
    return now - session.seen > SESSION_IDLE_S or now - session.created > SESSION_MAX_S


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def _error(exc: ApiError) -> web.Response:
    return web.json_response({"error": exc.message, "code": exc.code}, status=exc.status)


def _check_origin(request: web.Request) -> None:
    """Only the page itself may call the API: a request another site's page makes is
    refused before anything is looked at (it could not read the answer, but a login attempt
    from a victim's browser would still count against that browser's address)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"https://{request.host}":
        raise ApiError(403, "forbidden", "requests from other sites are refused")
    if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
        raise ApiError(403, "forbidden", "requests from other sites are refused")


async def _json(request: web.Request) -> dict[str, Any]:
    # JSON only: a form another site posts (text/plain, urlencoded) is not even parsed.
    if request.content_type != "application/json":
        raise ApiError(400, "bad_request", "send JSON (application/json)")
    raw = await request.read()
    if len(raw) > MAX_JSON:
        raise ApiError(413, "bad_request", "the request is too large")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_request", "the request is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the request must be a JSON object")
    return body


def _name(body: dict[str, Any]) -> str:
    name = body.get("user")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "bad_request", "give a user name")
    if len(name.encode("utf-8", "replace")) > NAME_LIMIT:
        raise ApiError(400, "bad_request", "the user name is too long")
    return name.strip()


def _next_part(blobs: Iterator[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    part: list[tuple[bytes, bytes]] = []
    size = 0
    for item in blobs:
        part.append(item)
        size += len(item[1]) + RECORD.size
        if size >= PART_BYTES:
            break
    return part


def _close(blobs: Iterator[tuple[bytes, bytes]]) -> None:
    close = getattr(blobs, "close", None)
    if callable(close):
        close()


async def _shielded(func: Callable[..., T], *args: Any) -> T:
    """Run blocking store work in a thread; a cancelled request waits for it to finish before
    it lets go of the store (as a backup session does)."""
    future = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise
