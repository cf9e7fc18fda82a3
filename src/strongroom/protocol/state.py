"""Which requests a server connection accepts in each phase (sans-IO).

HELLO first, then only the login messages until a login succeeds; a client whose password was
set by the admin may only choose a new one (and read nothing, write nothing) until it does.
"""

from __future__ import annotations

import enum

from . import messages as m
from .codec import ProtocolError


class Phase(enum.Enum):
    HELLO = "hello"
    LOGIN = "login"
    MUST_CHANGE_PASSWORD = "must-change-password"  # noqa: S105 - a phase name
    READY = "ready"


_PRE_LOGIN: set[type[m.Message]] = {m.AuthParamsRequest, m.Login, m.Bye}
_MUST_CHANGE: set[type[m.Message]] = {m.SetKeyFile, m.Bye}
# Requests that change stored data: refused for accounts flagged append-only where they delete.
WRITES: set[type[m.Message]] = {
    m.PutBlobs,
    m.Flush,
    m.ManifestPart,
    m.Commit,
    m.DeleteSnapshot,
    m.Protect,
    m.Prune,
}


class ServerState:
    def __init__(self) -> None:
        self.phase = Phase.HELLO

    def admit(self, msg: m.Message) -> m.Error | None:
        """None if `msg` may be handled now; otherwise the error to answer with.

        Raises ProtocolError when the connection must be closed (anything but HELLO first).
        """
        if self.phase is Phase.HELLO:
            if not isinstance(msg, m.Hello):
                raise ProtocolError("the first message must be HELLO")
            return None
        if isinstance(msg, m.Hello):
            return m.Error(m.ErrorCode.BAD_REQUEST, "HELLO was already received")
        if self.phase is Phase.LOGIN and type(msg) not in _PRE_LOGIN:
            return m.Error(m.ErrorCode.NOT_LOGGED_IN, "log in first")
        if self.phase is Phase.MUST_CHANGE_PASSWORD and type(msg) not in _MUST_CHANGE:
            return m.Error(
                m.ErrorCode.PASSWORD_CHANGE_REQUIRED,
                "your password was set by the admin: choose a new one with 'strongroom passwd'",
            )
        if self.phase in (Phase.READY, Phase.MUST_CHANGE_PASSWORD) and isinstance(
            msg, m.AuthParamsRequest | m.Login
        ):
            return m.Error(m.ErrorCode.BAD_REQUEST, "already logged in")
        return None
