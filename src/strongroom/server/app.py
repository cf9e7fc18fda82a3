"""The asyncio TLS listener: accepts connections up to a bound and runs a Session for each."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import signal
import ssl
import sys
import time

from ..errors import StrongroomError
from ..protocol import messages as m
from ..protocol.framing import encode_frame
from .alerts import AlertLoop
from .config import ServerConfig
from .context import ServerContext
from .control import serve_control, storage_held
from .limits import Slot
from .listener import AccountListener
from .nodes import SharedSessions
from .overview import all_statuses
from .purge import finish_purges
from .session import Session
from .shared_throttle import SharedThrottle
from .throttle import address_group
from .web.app import start_console

log = logging.getLogger("strongroom.server")

STREAM_BUFFER = 8 * 1024 * 1024  # read ahead while the previous request is being stored
REFUSAL_HANDSHAKES = 16  # refused connections told "busy" over TLS at once; others just closed
REFUSAL_TIMEOUT = 5.0


async def serve(ctx: ServerContext, tls: ssl.SSLContext, on_listening: object = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows
            loop.add_signal_handler(sig, stop.set)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        accepted = time.monotonic()  # the login deadline runs from here, handshake included
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        # The slot is taken before the TLS handshake, so handshakes in progress count too.
        slot = ctx.limits.open(address_group(host))
        if not isinstance(slot, Slot):
            log.warning("refused %s: %s", host, slot)
            await _refuse(ctx, writer, tls, slot)
            return
        ctx.connections.add(task)
        ctx.metrics.connections.inc()
        ctx.metrics.connections_open.inc()
        try:
            if await _handshake(ctx, writer, tls):
                await Session(ctx, reader, writer, slot, accepted=accepted).run()
        except asyncio.CancelledError:
            # The server is stopping. Ending normally matters: on Python 3.11 a cancelled
            # connection task makes asyncio log "Unhandled exception" with a traceback.
            log.info("closed a connection: the server is stopping")
        except Exception:  # a bug in one session must never take the server down
            log.exception("session failed")
        finally:
            ctx.metrics.connections_open.dec()
            ctx.limits.close(slot)
            ctx.connections.discard(task)

    server = await asyncio.start_server(
        on_connect,
        host=ctx.config.host,
        port=ctx.config.port,
        limit=STREAM_BUFFER,
        reuse_address=True,
    )
    addresses = [s.getsockname() for s in server.sockets]
    for addr in addresses:
        log.info("listening on %s:%d", addr[0], addr[1])
    console = await start_console(ctx, tls)
    web_addresses = console[1] if console is not None else []
    for addr in web_addresses:
        log.info("console on https://%s:%d/", *addr)
    ctx.metrics.watch_accounts(
        lambda: all_statuses(ctx.userdb, ctx.backend.storage, ctx.config.expected_interval),
        ctx.datadir.root,
    )
    if callable(on_listening):
        on_listening(addresses, web_addresses)
    control = await serve_control(ctx)
    watchers = [asyncio.create_task(AlertLoop(ctx).run())]
    listener: AccountListener | None = None
    if ctx.backend.cluster is not None:
        watchers.append(asyncio.create_task(heartbeat(ctx, ctx.backend.cluster)))
        listener = AccountListener(ctx, ctx.backend.conninfo)
        listener.start()
    async with server:
        await stop.wait()
        if control is not None:
            control.close()
        log.info("shutting down")
        for watcher in watchers:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if console is not None:
            await console[0].cleanup()
        server.close()
        for task in list(ctx.connections):
            task.cancel()
        if ctx.connections:
            await asyncio.wait(list(ctx.connections), timeout=10)
    ctx.stores.close_all()
    if listener is not None:
        await asyncio.to_thread(listener.stop)
    if ctx.backend.cluster is not None:
        await asyncio.to_thread(ctx.backend.cluster.stop)


async def heartbeat(ctx: ServerContext, cluster: SharedSessions) -> None:
    """Scale-out: keep this node's sessions alive in PostgreSQL and sweep what dead nodes
    left. A node that was presumed dead (it could not beat in time) ends its sessions: GC on
    other nodes may have deleted what they relied on; their clients retry."""
    interval = ctx.config.heartbeat_interval
    failing = False
    loop = asyncio.get_running_loop()
    # A thread of its own: a beat must not wait behind busy storage work in the shared pool,
    # or a loaded node would be taken for dead.
    beats = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="heartbeat")
    try:
        while True:
            await asyncio.sleep(interval)
            failing, alive = await _beat(ctx, cluster, loop, beats, failing)
            if not alive:
                log.warning("this node was presumed dead (no heartbeat in time); ending sessions")
                for user_id in list(ctx.sessions):
                    await ctx.end_sessions(user_id, "the server lost its database; retry", wait=0)
    finally:
        beats.shutdown(wait=False)


async def _beat(
    ctx: ServerContext,
    cluster: SharedSessions,
    loop: asyncio.AbstractEventLoop,
    beats: concurrent.futures.Executor,
    failing: bool,
) -> tuple[bool, bool]:
    """One heartbeat and the chores that ride on it; (failing now, still alive)."""
    try:
        alive = await loop.run_in_executor(beats, cluster.beat)
        if isinstance(ctx.throttle, SharedThrottle):
            await loop.run_in_executor(beats, ctx.throttle.sweep)
        # A purge another node or the admin could not finish (a session held the store).
        await loop.run_in_executor(
            beats,
            functools.partial(
                finish_purges, ctx.backend.storage, ctx.userdb, lambda sid: storage_held(ctx, sid)
            ),
        )
    except Exception as exc:  # the database away (or a bug): keep beating, say so once
        if not failing:
            detail = str(exc) if isinstance(exc, StrongroomError) else type(exc).__name__
            log.warning("heartbeat failed (sessions expire if this lasts): %s", detail)
        return True, True
    if failing:
        log.info("heartbeat works again")
    return False, alive


async def _handshake(ctx: ServerContext, writer: asyncio.StreamWriter, tls: ssl.SSLContext) -> bool:
    try:
        await writer.start_tls(tls, ssl_handshake_timeout=min(ctx.config.login_timeout, 30.0))
    except (OSError, ConnectionError, ssl.SSLError, TimeoutError) as exc:
        peer = writer.get_extra_info("peername")
        log.info("%s: TLS handshake failed (%s)", peer[0] if peer else "?", type(exc).__name__)
        writer.transport.abort()
        return False
    return True


async def _refuse(
    ctx: ServerContext, writer: asyncio.StreamWriter, tls: ssl.SSLContext, reason: str
) -> None:
    """Tell a refused client why, over TLS (it expects nothing else), with a short timeout and
    a few at a time; past that, just close: a flood earns no handshakes."""
    if ctx.refusing >= REFUSAL_HANDSHAKES:
        writer.transport.abort()
        return
    ctx.refusing += 1
    try:
        quiet = (OSError, ConnectionError, RuntimeError, TimeoutError, ssl.SSLError)
        with contextlib.suppress(*quiet):
            await writer.start_tls(tls, ssl_handshake_timeout=REFUSAL_TIMEOUT)
            writer.write(encode_frame(m.Error(m.ErrorCode.BUSY, reason), 0))
            await asyncio.wait_for(writer.drain(), REFUSAL_TIMEOUT)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), REFUSAL_TIMEOUT)
        writer.transport.abort()
    finally:
        ctx.refusing -= 1


def setup_logging(config: ServerConfig) -> None:
    from ..redact import RedactingFilter

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.log_file is not None:
        handlers.append(logging.FileHandler(config.log_file))
    for handler in handlers:  # every line, whoever logs it (psycopg, botocore): no secrets
        handler.addFilter(RedactingFilter())
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        handlers=handlers,
    )
