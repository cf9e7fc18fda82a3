"""The asyncio TLS listener: accepts connections up to a bound and runs a Session for each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from dataclasses import dataclass, field

from .. import __version__
from ..protocol import messages as m
from ..protocol.framing import encode_frame
from ..retention import Policy
from .config import ServerConfig
from .control import serve_control
from .datadir import DataDir
from .policy import policy_for
from .session import Session
from .stores import StoreRegistry
from .throttle import FailureThrottle
from .userdb import User, UserDB

log = logging.getLogger("strongroom.server")

STREAM_BUFFER = 8 * 1024 * 1024  # read ahead while the previous request is being stored


@dataclass
class ServerContext:
    config: ServerConfig
    datadir: DataDir
    userdb: UserDB
    secret: bytes
    stores: StoreRegistry
    throttle: FailureThrottle = field(default_factory=FailureThrottle)
    version: str = __version__
    connections: set[asyncio.Task[None]] = field(default_factory=set)

    def policy_for(self, user: User) -> Policy | None:
        return policy_for(self.userdb, user)


async def serve(ctx: ServerContext, tls: ssl.SSLContext, on_listening: object = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows
            loop.add_signal_handler(sig, stop.set)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(ctx.connections) >= ctx.config.max_connections:
            log.warning("refused %s: too many connections", writer.get_extra_info("peername"))
            with contextlib.suppress(OSError, ConnectionError, RuntimeError):
                writer.write(
                    encode_frame(m.Error(m.ErrorCode.BUSY, "server is busy, retry later"), 0)
                )
                await asyncio.wait_for(writer.drain(), 2)
                writer.close()
            return
        ctx.connections.add(task)
        try:
            await Session(ctx, reader, writer).run()
        except asyncio.CancelledError:
            # The server is stopping. Ending normally matters: on Python 3.11 a cancelled
            # connection task makes asyncio log "Unhandled exception" with a traceback.
            log.info("closed a connection: the server is stopping")
        except Exception:  # a bug in one session must never take the server down
            log.exception("session failed")
        finally:
            ctx.connections.discard(task)

    server = await asyncio.start_server(
        on_connect,
        host=ctx.config.host,
        port=ctx.config.port,
        ssl=tls,
        ssl_handshake_timeout=min(ctx.config.login_timeout, 30.0),
        limit=STREAM_BUFFER,
        reuse_address=True,
    )
    addresses = [s.getsockname() for s in server.sockets]
    for addr in addresses:
        log.info("listening on %s:%d", addr[0], addr[1])
    if callable(on_listening):
        on_listening(addresses)
    control = await serve_control(ctx)
    async with server:
        await stop.wait()
        if control is not None:
            control.close()
        log.info("shutting down")
        server.close()
        for task in list(ctx.connections):
            task.cancel()
        if ctx.connections:
            await asyncio.wait(list(ctx.connections), timeout=10)
    ctx.stores.close_all()
    ctx.userdb.close()


def setup_logging(config: ServerConfig) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.log_file is not None:
        handlers.append(logging.FileHandler(config.log_file))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        handlers=handlers,
    )
