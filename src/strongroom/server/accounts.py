"""Account operations shared by `strongroom-admin` (commands and menu): login verifiers made
from an admin-chosen password, and a user's row plus storage created together.

The admin never sees a user's data keys: a new user has no key file; the client makes the keys
at the first login, when it makes the user replace the admin-chosen password.
"""

from __future__ import annotations

import contextlib
import os

from .. import crypto, keys
from ..crypto import KdfParams
from .backend import Storage
from .schema import DEFAULT_PROTECT_WINDOW_S
from .userdb import User, UserDB


def login_material(password: bytes, kdf: KdfParams) -> tuple[bytes, bytes]:
    """A fresh salt and the auth hash a client logging in with `password` will match."""
    salt = os.urandom(16)
    pk = crypto.split_master(crypto.derive_master(password, salt, kdf))
    return salt, keys.auth_hash(pk.auth_key)


def add_user(
    storage: Storage,
    db: UserDB,
    name: str,
    password: bytes,
    *,
    directory: str,
    kdf: KdfParams,
    quota: int | None = None,
    append_only: bool = False,
    protect_window_s: int = DEFAULT_PROTECT_WINDOW_S,
) -> User:
    """Add the user and create their storage; if the storage cannot be made, the row goes too."""
    salt, auth_hash = login_material(password, kdf)
    user = db.add(
        name,
        directory=directory,
        salt=salt,
        kdf=kdf,
        auth_hash=auth_hash,
        quota=quota,
        append_only=append_only,
        protect_window_s=protect_window_s,
    )
    try:
        storage.create(user.storage_id)
    except BaseException:
        with contextlib.suppress(Exception):
            db.delete(user.name)
        raise
    return user
