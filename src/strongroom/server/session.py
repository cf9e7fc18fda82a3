"""One client connection: read frames, check the phase, run each request, answer.

Requests on a connection are handled in order (the client pipelines them, so no round trip is
waited for per blob); storage and database work runs in threads so one busy or slow client never
holds up the event loop that serves the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ..blobs import BlobType
from ..db import ConstraintError
from ..errors import IntegrityError, RepositoryError, StrongroomError
from ..keys import KeyFile
from ..protocol import messages as m
from ..protocol.codec import ID_SIZE, ProtocolError
from ..protocol.framing import MAX_FRAME, MAX_LOGIN_FRAME, Frame, FrameDecoder, encode_frame
from ..protocol.state import WRITES, Phase, ServerState
from ..snapshot import is_snapshot_id
from ..store.gc import GcReport
from ..store.packstore import RootNotInManifest
from . import auth
from .limits import Slot
from .logins import ACCOUNT_CHANGED, ACCOUNT_GONE, account_change, check_auth_key
from .manifest import ManifestStaging
from .opsdb import clean_text
from .stores import MIN_STORED_BLOB, QuotaExceeded, SnapshotLimit, UserStore
from .throttle import LoginRefused, address_group
from .userdb import User

if TYPE_CHECKING:
    from .context import ServerContext

log = logging.getLogger("strongroom.server")

T = TypeVar("T")

CHUNK_BYTES = 4 * 1024 * 1024  # size of one part of a streamed answer
IDS_PER_PART = 65536
MAX_MANIFEST = 4_000_000  # IDs staged for one commit (128 MB in a temporary file, not memory)
MAX_RECORD = 1024 * 1024
MAX_TIME_NS = 2**63 - 1  # what the database's INTEGER holds
MAX_STORED_BLOB = 16 * 1024 * 1024 + 1024
_BLOB_TYPES = frozenset(int(t) for t in BlobType)


class Close(Exception):
    """End this connection after sending `reply` (if any)."""

    def __init__(self, reply: m.Error | None = None) -> None:
        super().__init__(reply.message if reply else "closed")
        self.reply = reply


class Session:
    def __init__(
        self,
        ctx: ServerContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        slot: Slot | None = None,
        *,
        accepted: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.host = peer[0] if isinstance(peer, tuple) else str(peer)
        self.slot = slot or Slot(address_group(self.host))
        self.state = ServerState()
        self.decoder = FrameDecoder(MAX_LOGIN_FRAME)  # raised to MAX_FRAME by a login
        self.user: User | None = None
        self.store: UserStore | None = None
        self.manifest = ManifestStaging(ctx.datadir.root, MAX_MANIFEST)
        start = time.monotonic() if accepted is None else accepted
        self.login_deadline = start + ctx.config.login_timeout
        self.put_blobs = 0
        self.put_bytes = 0
        # The account's generation at login: any change of its login, keys or append-only
        # flag moves it, and this session then ends (checked on every request).
        self.generation = -1
        # Logged in with a password the admin set: the only kind of session that may set the
        # first key file after a reset.
        self.admin_password_login = False
        self.task: asyncio.Task[Any] | None = None
        self.ended: str | None = None  # why end() was called
        self.released = asyncio.Event()  # set once this session let go of the user's storage
        self._busy: asyncio.Future[Any] | None = None  # storage work running in a thread

    # ---- connection loop --------------------------------------------------------------------

    async def run(self) -> None:
        log.info("connection from %s", self.address)
        self.task = asyncio.current_task()
        reason = "closed by client"
        try:
            while True:
                frame = await self._read_frame()
                if frame is None:
                    break
                if not await self._handle(frame):
                    break
        except asyncio.CancelledError:
            if self.ended is None or self.task is None:
                reason = "the server is stopping"
                raise
            self.task.uncancel()  # ended on purpose (end()): close with a word, not a cancel
            reason = self.ended
            await self._send_quietly(m.Error(m.ErrorCode.SESSION_ENDED, self.ended), 0)
        except Close as exc:
            reason = exc.reply.message if exc.reply else "closed"
            if exc.reply is not None:
                await self._send_quietly(exc.reply, 0)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("%s: %s", self.address, reason)
            await self._send_quietly(m.Error(m.ErrorCode.BAD_REQUEST, str(exc)), 0)
        except TimeoutError:
            reason = "timed out"
            log.info("%s: timed out", self.address)
            await self._send_quietly(m.Error(m.ErrorCode.TIMEOUT, "connection timed out"), 0)
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            reason = f"connection lost ({type(exc).__name__})"
        finally:
            await self._cleanup(reason)

    async def _read_frame(self) -> Frame | None:
        if self.state.phase in (Phase.HELLO, Phase.LOGIN):
            deadline = self.login_deadline
        else:
            deadline = time.monotonic() + self.ctx.config.idle_timeout
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            data = await asyncio.wait_for(self.reader.read(1 << 20), left)
            if not data:
                if self.decoder.in_frame():
                    raise ConnectionError("connection closed in the middle of a frame")
                return None
            self.ctx.metrics.received.inc(len(data))
            self.decoder.feed(data)

    async def _send(self, msg: m.Message, request_id: int) -> None:
        frame = encode_frame(msg, request_id)
        self.ctx.metrics.sent.inc(len(frame))
        self.writer.write(frame)
        # A peer that stops reading must not hold its session (and a connection slot) for ever.
        await asyncio.wait_for(self.writer.drain(), self.ctx.config.idle_timeout)

    async def _send_quietly(self, msg: m.Message, request_id: int) -> None:
        with contextlib.suppress(OSError, ConnectionError, TimeoutError, RuntimeError):
            await asyncio.wait_for(self._send(msg, request_id), 5)

    def end(self, reason: str) -> asyncio.Event:
        """End this session from outside (an account change): it answers SESSION_ENDED and
        closes; storage work already running in a thread finishes first (see _cleanup). The
        event is set once the session has let go of the user's storage."""
        if self.ended is None:
            self.ended = reason
            if self.task is not None:
                self.task.cancel()
        return self.released

    async def _cleanup(self, reason: str) -> None:
        if self._busy is not None and not self._busy.done():
            # Cancelled while a thread works on the store (or the staged manifest): let it
            # finish before letting go of either.
            await asyncio.wait([self._busy])
        self._unstage()
        self.manifest.close()
        if self.user is not None:
            live = self.ctx.sessions.get(self.user.id)
            if live is not None:
                live.discard(self)
                if not live:
                    del self.ctx.sessions[self.user.id]
        if self.store is not None and self.user is not None:
            self.store = None
            await asyncio.to_thread(self.ctx.stores.release, self.user.storage_id, self)
        self.released.set()
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError, TimeoutError, RuntimeError):
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 5)
            except TimeoutError:  # the peer reads nothing: drop what is still queued for it
                self.writer.transport.abort()
        who = f" user={self.user.name}" if self.user else ""
        log.info("%s: disconnected%s (%s)", self.address, who, reason)

    async def _thread(self, func: Callable[..., T], *args: Any) -> T:
        # Shielded: a cancelled session does not abandon a thread that is half-way through a
        # write to the store; _cleanup waits for it before the store may be closed.
        fut = asyncio.ensure_future(asyncio.to_thread(func, *args))
        self._busy = fut
        return await asyncio.shield(fut)

    # ---- dispatch ---------------------------------------------------------------------------

    async def _handle(self, frame: Frame) -> bool:
        """Answer one request; False ends the connection."""
        started = time.monotonic()
        msg = m.decode_message(m.REQUESTS, frame.msg_type, frame.payload)
        try:
            return await self._answer(msg, frame.request_id)
        finally:
            self.ctx.metrics.request_seconds.labels(m.describe(msg)).observe(
                time.monotonic() - started
            )

    async def _answer(self, msg: m.Message, rid: int) -> bool:
        refusal = self.state.admit(msg)
        if refusal is not None:
            await self._send(refusal, rid)
            return True
        if isinstance(msg, m.Hello):
            return await self._hello(msg, rid)
        if isinstance(msg, m.Bye):
            if self.store is not None and self.user is not None:
                # Let go of the storage before answering: once the client has its answer, a
                # GC it starts next (`forget` then `prune`) is not held back by this session.
                self.store = None
                await self._thread(self.ctx.stores.release, self.user.storage_id, self)
            await self._send(m.Ok(), rid)
            return False
        if isinstance(msg, m.AuthParamsRequest | m.Login):
            try:
                if isinstance(msg, m.Login):
                    return await self._login(msg, rid)
                await self._auth_params(msg, rid)
                return True
            except StrongroomError as exc:  # the database or the object store is unreachable
                log.warning("%s: %s failed: %s", self.address, m.describe(msg), exc)
                raise Close(_error_for(exc)) from None
        try:
            await self._authenticated(msg, rid)
        except Close:
            raise
        except StrongroomError as exc:
            reply = _error_for(exc)
            who = self.user.name if self.user else "?"
            log.warning("%s: user %r: %s refused: %s", self.address, who, m.describe(msg), exc)
            await self._send(reply, rid)
        return True

    async def _auth_params(self, msg: m.AuthParamsRequest, rid: int) -> None:
        user = await self._thread(self.ctx.userdb.get, msg.user)
        answer = auth.salt_for(user, msg.user, self.ctx.secret)  # folds unknown names
        await self._send(
            m.AuthParams(
                answer.salt, answer.kdf.memory_kib, answer.kdf.iterations, answer.kdf.lanes
            ),
            rid,
        )

    async def _hello(self, msg: m.Hello, rid: int) -> bool:
        if msg.version != m.PROTOCOL_VERSION:
            raise Close(
                m.Error(
                    m.ErrorCode.UNSUPPORTED_VERSION,
                    f"this server speaks protocol {m.PROTOCOL_VERSION}, the client {msg.version}; "
                    "update the older side",
                )
            )
        self.state.phase = Phase.LOGIN
        await self._send(
            m.Welcome(m.PROTOCOL_VERSION, f"strongroom-server {self.ctx.version}"), rid
        )
        return True

    async def _login(self, msg: m.Login, rid: int) -> bool:
        left = self.login_deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            # Waiting for earlier attempts on the same account or address counts against the
            # login deadline, so a queue of guesses cannot hold connections for ever.
            async with asyncio.timeout(left):
                user = await self._check_login(msg)
        except LoginRefused as exc:
            self.ctx.metrics.auth_failures.inc()
            log.warning(
                "%s: login for user %r refused: locked out for %.0f s after failed logins",
                self.address,
                msg.user,
                exc.retry_after,
            )
            minutes = max(1, round(exc.retry_after / 60))
            await self._send(
                m.Error(
                    m.ErrorCode.RATE_LIMITED,
                    "too many failed logins for this account or from this address; "
                    f"try again in {minutes} minute(s)",
                ),
                rid,
            )
            return True
        if user is None:
            await self._send(m.Error(m.ErrorCode.AUTH_FAILED, "wrong user name or password"), rid)
            return True
        refusal = self.ctx.limits.authenticate(self.slot, user.id)
        if refusal is not None:
            log.warning("%s: user %r refused: %s", self.address, user.name, refusal)
            raise Close(m.Error(m.ErrorCode.BUSY, refusal))
        self.store = await self._thread(
            functools.partial(self.ctx.stores.acquire, user.storage_id, self, user_id=user.id)
        )
        self.user = user
        self.generation = user.generation
        self.admin_password_login = user.must_change_password
        self.ctx.sessions.setdefault(user.id, set()).add(self)
        # Registered now, so an admin change from here on ends this session; one that came
        # between the password check and here (a reset, a delete and purge) is caught by
        # reading the row once more (cleanup then lets go of the store).
        await self._current_user()
        self.decoder.max_frame = MAX_FRAME
        self.state.phase = Phase.MUST_CHANGE_PASSWORD if user.must_change_password else Phase.READY
        flags = (m.LOGIN_MUST_CHANGE_PASSWORD if user.must_change_password else 0) | (
            m.LOGIN_APPEND_ONLY if user.append_only else 0
        )
        log.info("%s: login ok for user %r", self.address, user.name)
        await self._send(
            m.LoginOk(flags, user.directory, user.keyfile or b"", user.storage_id), rid
        )
        return True

    async def _check_login(self, msg: m.Login) -> User | None:
        """The user if the auth key is right, else None (after the throttle's delay)."""
        return await check_auth_key(
            self.ctx, msg.user, msg.auth_key, self.slot.group, self.address, self._thread
        )

    async def _current_user(self) -> User:
        """The user's row as it is now: admin changes apply to open connections at once."""
        assert self.user is not None
        user = await self._thread(self.ctx.userdb.get_by_id, self.user.id)
        change = account_change(user, self.user.storage_id, self.generation)
        if change == ACCOUNT_GONE or user is None:
            raise Close(m.Error(m.ErrorCode.ACCOUNT_GONE, ACCOUNT_GONE))
        if change is not None:
            raise Close(m.Error(m.ErrorCode.SESSION_ENDED, ACCOUNT_CHANGED))
        self.user = user
        return user

    async def _authenticated(self, msg: m.Message, rid: int) -> None:
        user = await self._current_user()
        store = self.store
        assert store is not None
        if isinstance(msg, m.SetKeyFile):
            await self._set_keyfile(user, msg, rid)
        elif user.must_change_password and type(msg) in WRITES:
            await self._send(
                m.Error(m.ErrorCode.PASSWORD_CHANGE_REQUIRED, "choose a new password first"), rid
            )
        elif isinstance(msg, m.PutBlobs):
            await self._put(user, store, msg, rid)
        elif isinstance(msg, m.Flush):
            await self._thread(store.flush)
            await self._send(m.Ok(), rid)
        elif isinstance(msg, m.ManifestPart):
            await self._stage(user, msg.ids)
            await self._send(m.Ok(self.manifest.count), rid)
        elif isinstance(msg, m.Commit):
            await self._commit(user, store, msg, rid)
        elif isinstance(msg, m.ListIds):
            ids = await self._thread(store.store.all_blob_ids)
            await self._send_ids(list(ids), rid)
        elif isinstance(msg, m.Have):
            missing = await self._thread(store.store.missing, msg.ids)
            await self._send(m.Ids([b for b in dict.fromkeys(msg.ids) if b in missing]), rid)
        elif isinstance(msg, m.ListSnapshots):
            await self._list_snapshots(store, rid)
        elif isinstance(msg, m.DeleteSnapshot):
            if user.append_only:
                raise _Forbidden("append-only account: snapshots cannot be removed")
            try:
                removed = await self._thread(store.delete_snapshot, msg.snap_id)
            except RepositoryError as exc:  # a protected snapshot
                raise _Forbidden(str(exc)) from None
            if removed:
                log.info(
                    "%s: user %r removed snapshot %s", self.address, user.name, msg.snap_id[:8]
                )
            await self._send(m.Ok(int(removed)), rid)
        elif isinstance(msg, m.Protect):
            if user.append_only and not msg.protected:
                raise _Forbidden("append-only account: protection cannot be removed")
            changed = await self._thread(
                store.store.set_protected, msg.snap_id, bool(msg.protected)
            )
            await self._send(m.Ok(int(changed)), rid)
        elif isinstance(msg, m.Prune):
            report = await self._thread(
                functools.partial(store.gc, dry_run=bool(msg.dry_run), exclude=self)
            )
            await self._log_gc(user, report)
            await self._send(m.Json(json.dumps(report.to_json())), rid)
        elif isinstance(msg, m.ReadBlobs):
            await self._stream_blobs(store.read(msg.ids), rid)
        elif isinstance(msg, m.GetManifest):
            ids = await self._thread(store.store.snapshot_manifest, msg.snap_id)
            await self._send_ids(list(ids), rid)
        elif isinstance(msg, m.ReadAll):
            await self._stream_blobs(
                (
                    (bid, m.BLOB_INTACT if ok else m.BLOB_DAMAGED, data)
                    for bid, ok, data in store.store.iter_verified()
                ),
                rid,
            )
        elif isinstance(msg, m.CheckStorage):
            problems = await self._thread(store.store.storage_problems)
            await self._send(m.Texts(problems), rid)
        elif isinstance(msg, m.ReportFailure):
            await self._report_failure(user, msg, rid)
        else:  # pragma: no cover - every request type is handled above
            await self._send(m.Error(m.ErrorCode.BAD_REQUEST, "unexpected request"), rid)

    # ---- requests ---------------------------------------------------------------------------

    async def _stage(self, user: User, ids: list[bytes]) -> None:
        """Stage a manifest part on disk. What an account stages, over all its connections, is
        bounded by one largest manifest and by its quota: staged files use the server's disk."""
        staged = self.ctx.staged.get(user.id, 0) + len(ids) * ID_SIZE
        if self.manifest.count + len(ids) > MAX_MANIFEST or staged > MAX_MANIFEST * ID_SIZE:
            raise Close(m.Error(m.ErrorCode.BAD_REQUEST, "manifest is too large"))
        if user.quota is not None and staged > user.quota:
            raise Close(
                m.Error(m.ErrorCode.QUOTA_EXCEEDED, "the snapshot's manifest exceeds the quota")
            )
        self.ctx.staged[user.id] = staged
        try:
            await self._thread(self.manifest.add, ids)
        except BaseException:
            self.ctx.staged[user.id] -= len(ids) * ID_SIZE  # not staged after all
            raise

    def _unstage(self) -> None:
        """This connection's staged IDs no longer count for its account (committed or gone)."""
        if self.user is None or not self.manifest.count:
            return
        left = self.ctx.staged.get(self.user.id, 0) - self.manifest.count * ID_SIZE
        if left > 0:
            self.ctx.staged[self.user.id] = left
        else:
            self.ctx.staged.pop(self.user.id, None)

    async def _set_keyfile(self, user: User, msg: m.SetKeyFile, rid: int) -> None:
        keyfile = KeyFile.from_json(msg.keyfile)  # IntegrityError -> answered as an error
        if not keyfile.wrapped:
            raise IntegrityError("the new key file holds no keys")
        if user.must_change_password and not self.admin_password_login:
            # Only whoever holds the password the admin just set may choose the next one.
            raise _Forbidden("the admin reset this account's password; log in with the new one")
        current = user.keyfile
        if current is not None and not user.must_change_password:
            if KeyFile.from_json(current).same_login(keyfile):
                # Only the recovery wrapping changes: the password opens the same keys, so even
                # an append-only account may, and no session needs to end.
                await self._thread(
                    functools.partial(
                        self.ctx.userdb.set_recovery_wrapping,
                        user.id,
                        keyfile,
                        generation=self.generation,
                        current=current,
                    )
                )
                log.info("%s: user %r changed their recovery key", self.address, user.name)
                await self._send(m.Ok(), rid)
                return
            if user.append_only:
                # Replacing the wrapped keys could make every backup unreadable: a delete in
                # effect.
                raise _Forbidden("append-only account: ask the admin to reset your password")
        previous = self.generation
        # Counted as this session's own from the start: the notice of this very change
        # (server/listener.py) may arrive before the call returns, and must not end it.
        self.generation = previous + 1
        try:
            self.generation = await self._thread(
                functools.partial(
                    self.ctx.userdb.set_keyfile, user.id, keyfile, generation=previous
                )
            )
        except BaseException:
            self.generation = previous  # not changed: the next request sees who did
            raise
        self.admin_password_login = False
        self.state.phase = Phase.READY
        log.info("%s: user %r changed their password", self.address, user.name)
        ended = await self.ctx.end_sessions(user.id, ACCOUNT_CHANGED, keep=self, wait=0)
        if ended:
            log.info("%s: ended %d other session(s) of user %r", self.address, ended, user.name)
        await self._send(m.Ok(), rid)

    async def _put(self, user: User, store: UserStore, msg: m.PutBlobs, rid: int) -> None:
        size = 0
        for _bid, blob_type, data in msg.blobs:
            if len(data) > MAX_STORED_BLOB:
                raise Close(m.Error(m.ErrorCode.BAD_REQUEST, "blob is over the size limit"))
            if blob_type not in _BLOB_TYPES:
                raise Close(m.Error(m.ErrorCode.BAD_REQUEST, f"unknown blob type {blob_type}"))
            if len(data) < MIN_STORED_BLOB:
                raise Close(m.Error(m.ErrorCode.BAD_REQUEST, "blob is under the size limit"))
            size += len(data)
        try:
            added = await self._thread(store.put, msg.blobs, user.quota)
        except QuotaExceeded as exc:
            # The backup fails here, before any commit: the admin's "last backup" says so.
            await self._thread(
                self.ctx.userdb.record_backup, user.id, time.time_ns(), "failed (quota)"
            )
            await self._thread(self.ctx.ops.add_event, user.id, "quota", str(exc))
            raise
        self.put_blobs += added
        self.put_bytes += size
        await self._send(m.Ok(added), rid)

    async def _commit(self, user: User, store: UserStore, msg: m.Commit, rid: int) -> None:
        if not is_snapshot_id(msg.snap_id):
            raise Close(m.Error(m.ErrorCode.BAD_REQUEST, "invalid snapshot ID"))
        if len(msg.record) > MAX_RECORD:
            raise Close(m.Error(m.ErrorCode.BAD_REQUEST, "snapshot record is too large"))
        if msg.time_ns > MAX_TIME_NS:
            raise Close(m.Error(m.ErrorCode.BAD_REQUEST, "invalid snapshot time"))
        refs = self.manifest.count
        self._unstage()
        manifest = self.manifest.take()
        try:
            await self._admit_commit(user, msg, refs)
            try:
                await self._thread(
                    functools.partial(
                        store.commit,
                        msg.snap_id,
                        msg.time_ns,
                        msg.record,
                        manifest,
                        msg.series,
                        root=msg.root,
                        refs=refs,
                        quota=user.quota,
                        max_snapshots=self.ctx.config.max_snapshots,
                    )
                )
            except ConstraintError:  # the one constraint a commit can break: a taken ID
                raise _BadRequest(f"snapshot {msg.snap_id[:8]} already exists") from None
            except RootNotInManifest as exc:
                raise _BadRequest(str(exc)) from None
        except StrongroomError as exc:
            result = "failed (quota)" if isinstance(exc, QuotaExceeded) else "failed"
            await self._thread(self.ctx.userdb.record_backup, user.id, time.time_ns(), result)
            await self._thread(self.ctx.ops.add_event, user.id, "commit", str(exc))
            self.ctx.metrics.commits.labels("refused").inc()
            log.warning("%s: user %r: commit refused: %s", self.address, user.name, exc)
            raise
        await self._thread(self.ctx.userdb.record_backup, user.id, time.time_ns(), "ok")
        self.ctx.metrics.commits.labels("ok").inc()
        log.info(
            "%s: user %r committed snapshot %s (%d blobs referenced, %d new blobs, %d bytes sent)",
            self.address,
            user.name,
            msg.snap_id[:8],
            refs,
            self.put_blobs,
            self.put_bytes,
        )
        self.put_blobs = self.put_bytes = 0
        await self._send(m.Ok(), rid)
        await self._after_backup(user, store)

    async def _admit_commit(self, user: User, msg: m.Commit, refs: int) -> None:
        """The checks a forged commit meets before it costs the store anything."""
        skew_ns = int(self.ctx.config.max_clock_skew * 1e9)
        now = time.time_ns()
        if msg.time_ns > now + skew_ns:
            ahead = (msg.time_ns - now) / 60e9
            raise _BadRequest(
                f"the snapshot's time is {ahead:.0f} minutes ahead of the server's clock; "
                "check this computer's clock"
            )
        if refs == 0:
            raise _BadRequest("a snapshot must reference its blobs (the manifest is empty)")
        if not await self._thread(self.ctx.commits.allow, user.id):
            raise _RateLimited(
                f"more than {self.ctx.config.max_commits_per_hour} snapshots committed in the "
                "last hour for this account; try again later"
            )
        if msg.time_ns < now - skew_ns:
            log.info(
                "%s: user %r: snapshot %s is dated %.1f hours before the server's clock "
                "(backdated; the server's policy counts it from now)",
                self.address,
                user.name,
                msg.snap_id[:8],
                (now - msg.time_ns) / 3600e9,
            )

    async def _after_backup(self, user: User, store: UserStore) -> None:
        """The admin's retention policy, applied by the server itself (append-only accounts
        too), then a GC of what it released, then a point of the account's usage history.
        The client has its answer already."""
        try:
            await self._retain(user, store)
        finally:
            await self._thread(self._record_usage, user, store)

    def _record_usage(self, user: User, store: UserStore) -> None:
        snapshots = int(store.store.query("SELECT COUNT(*) FROM snapshots")[0][0])
        self.ctx.ops.record_usage(user.id, store.store.stored_bytes(), snapshots, "backup")

    async def _retain(self, user: User, store: UserStore) -> None:
        policy = await self._thread(self.ctx.policy_for, user)
        if policy is None:
            return
        try:
            decisions = await self._thread(store.apply_policy, policy, user)
            removed = [d.candidate.id[:8] for d in decisions if not d.keep]
            if not removed:
                return
            log.info(
                "%s: user %r: policy (%s) removed %d snapshot(s): %s",
                self.address,
                user.name,
                policy.describe(),
                len(removed),
                " ".join(removed),
            )
            report = await self._thread(functools.partial(store.gc, exclude=self))
            await self._log_gc(user, report)
        except StrongroomError as exc:
            log.warning("%s: user %r: retention failed: %s", self.address, user.name, exc)

    async def _report_failure(self, user: User, msg: m.ReportFailure, rid: int) -> None:
        """A backup that failed on the client (unreachable server, missing folder): the
        admin's view says "failed". Bounded like commits; the text is cleaned of control
        characters (it reaches the log and the console)."""
        if not await self._thread(self.ctx.commits.allow, user.id):
            raise _RateLimited("too many reports and commits in the last hour; try again later")
        text = clean_text(msg.message)
        await self._thread(self.ctx.userdb.record_backup, user.id, time.time_ns(), "failed")
        await self._thread(self.ctx.ops.add_event, user.id, "client", text)
        log.warning("%s: user %r reports a failed backup: %s", self.address, user.name, text)
        await self._send(m.Ok(), rid)

    async def _log_gc(self, user: User, report: GcReport) -> None:
        if not report.dry_run:
            await self._thread(self.ctx.note_gc, user, report.reclaimed_bytes)
        log.info(
            "%s: user %r: gc%s: %d blobs deleted, %d packs deleted, %d repacked, "
            "%d bytes reclaimed, %d blobs waiting for running backups",
            self.address,
            user.name,
            " (dry run)" if report.dry_run else "",
            report.deleted_blobs,
            report.deleted_packs,
            report.repacked_packs,
            report.reclaimed_bytes,
            report.waiting_blobs,
        )

    async def _list_snapshots(self, store: UserStore, rid: int) -> None:
        rows = await self._thread(store.snapshots)
        part: list[tuple[str, int, bytes, str, int, int]] = []
        size = 0
        for row in rows:
            part.append(
                (
                    row.snap_id,
                    row.time_ns,
                    row.record,
                    row.series,
                    int(row.protected),
                    row.received_ns,
                )
            )
            size += len(row.record) + 100
            if size >= CHUNK_BYTES:
                await self._send(m.SnapshotRows(part), rid)
                part, size = [], 0
        if part:
            await self._send(m.SnapshotRows(part), rid)
        await self._send(m.End(len(rows)), rid)

    async def _send_ids(self, ids: list[bytes], rid: int) -> None:
        for i in range(0, len(ids), IDS_PER_PART):
            await self._send(m.Ids(ids[i : i + IDS_PER_PART]), rid)
        await self._send(m.End(len(ids)), rid)

    async def _stream_blobs(
        self, source: Iterator[tuple[bytes, int, bytes]] | Any, rid: int
    ) -> None:
        """Send blobs in parts of ~4 MiB as they are read (in a thread), then End."""
        it = iter(source)
        count = 0
        while True:
            part = await self._thread(_next_part, it)
            if not part:
                break
            count += len(part)
            await self._send(m.Blobs(part), rid)
        await self._send(m.End(count), rid)


class _Forbidden(StrongroomError):
    pass


class _BadRequest(StrongroomError):
    pass


class _RateLimited(StrongroomError):
    pass


def _next_part(it: Iterator[Any]) -> list[tuple[bytes, int, bytes]]:
    part: list[tuple[bytes, int, bytes]] = []
    size = 0
    for item in it:
        if len(item) == 2:
            item = (item[0], m.BLOB_INTACT, item[1])
        part.append(item)
        size += len(item[2]) + 40
        if size >= CHUNK_BYTES:
            break
    return part


def _error_for(exc: StrongroomError) -> m.Error:
    text = str(exc)
    if isinstance(exc, _Forbidden):
        code = m.ErrorCode.FORBIDDEN
    elif isinstance(exc, QuotaExceeded):
        code = m.ErrorCode.QUOTA_EXCEEDED
    elif isinstance(exc, _RateLimited | SnapshotLimit):
        code = m.ErrorCode.RATE_LIMITED
    elif isinstance(exc, _BadRequest):
        code = m.ErrorCode.BAD_REQUEST
    elif isinstance(exc, IntegrityError) and "does not have" in text:
        code = m.ErrorCode.MISSING_BLOBS
    elif isinstance(exc, IntegrityError) and "missing" in text:
        code = m.ErrorCode.NOT_FOUND
    elif isinstance(exc, IntegrityError):
        code = m.ErrorCode.DAMAGED
    elif isinstance(exc, RepositoryError) and _is_disk_full(exc):
        code = m.ErrorCode.DISK_FULL
        text = "the server's disk is full; ask the admin to free space"
    else:
        code = m.ErrorCode.SERVER_ERROR
    return m.Error(code, text[: m.MESSAGE_LIMIT])


def _is_disk_full(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left" in str(exc) or "quota exceeded" in str(exc).lower()
