"""The server's identity in scale-out mode: one TLS certificate, its key and the server secret
(fake salts for unknown users) in PostgreSQL, so every node serves the same certificate and
clients keep their pinned fingerprint whichever node answers.

The first node to start makes them (or `strongroom-admin migrate` copies the embedded data
folder's); the insert is "if absent", so two nodes starting at once agree on one identity. Each
node writes them to its own work folder (tls/, mode 0600) for the TLS library to load.
"""

from __future__ import annotations

import os

from ..db import Database
from ..errors import StrongroomError
from .datadir import SECRET_SIZE, DataDir, make_dir, replace_file
from .tls import new_identity

NAMES = ("tls_cert", "tls_key", "server_secret")


def load_identity(db: Database) -> dict[str, bytes]:
    return {str(r[0]): bytes(r[1]) for r in db.query("SELECT name, value FROM server_identity")}


def store_identity(db: Database, values: dict[str, bytes]) -> dict[str, bytes]:
    """Insert what is absent (never overwrite: a node may already serve it); the result."""
    with db.transaction() as tx:
        for name in NAMES:
            if name in values:
                tx.execute(
                    "INSERT INTO server_identity(name, value) VALUES(?, ?) "
                    "ON CONFLICT(name) DO NOTHING",
                    (name, values[name]),
                )
    return load_identity(db)


def shared_identity(db: Database) -> dict[str, bytes]:
    """The cluster's certificate, key and secret, made now if no node made them yet."""
    found = load_identity(db)
    if all(n in found for n in NAMES):
        return found
    cert, key = new_identity([])
    found = store_identity(
        db, {"tls_cert": cert, "tls_key": key, "server_secret": os.urandom(SECRET_SIZE)}
    )
    if len(found.get("server_secret", b"")) != SECRET_SIZE or not all(n in found for n in NAMES):
        raise StrongroomError("the server identity in PostgreSQL is incomplete or damaged")
    return found


def materialise(datadir: DataDir, identity: dict[str, bytes]) -> None:
    """Write the certificate and key where the TLS context loads them (this node's folder)."""
    make_dir(datadir.tls_dir)
    replace_file(datadir.key_path, identity["tls_key"], 0o600)
    replace_file(datadir.cert_path, identity["tls_cert"], 0o644)
