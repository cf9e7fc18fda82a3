"""The server's data folder: where the user database, TLS files, secret and storage live.

Layout (all created on demand, folders 0700, secret and key 0600)::

    users.sqlite        the user database (server/userdb.py)
    server.secret       32 random bytes, e.g. for the fake salts of unknown users
    tls/cert.pem        the self-signed certificate (server/tls.py)
    tls/key.pem
    storage/<id>/       one pack store per user, named by a random storage ID, not the user name
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from ..durable import fsync_dir
from ..errors import StrongroomError

SECRET_SIZE = 32
_STORAGE_ID = re.compile(r"[0-9a-f]{32}")


class DataDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.users_db = root / "users.sqlite"
        self.tls_dir = root / "tls"
        self.cert_path = self.tls_dir / "cert.pem"
        self.key_path = self.tls_dir / "key.pem"
        self.secret_path = root / "server.secret"
        self.storage_root = root / "storage"

    def ensure(self) -> None:
        """Create whatever is missing. Idempotent; two processes may run it at once."""
        for folder in (self.root, self.tls_dir, self.storage_root):
            if make_dir(folder):
                fsync_dir(folder.parent)
        if not self.secret_path.exists():
            write_new_file(self.secret_path, os.urandom(SECRET_SIZE), 0o600)

    def server_secret(self) -> bytes:
        try:
            secret = self.secret_path.read_bytes()
        except OSError as exc:
            raise StrongroomError(
                f"cannot read the server secret {self.secret_path}: {exc.strerror}"
            ) from None
        if len(secret) != SECRET_SIZE:
            raise StrongroomError(
                f"the server secret {self.secret_path} is damaged "
                f"(expected {SECRET_SIZE} bytes); restore it from a backup"
            )
        return secret

    def storage_path(self, storage_id: str) -> Path:
        return self.storage_root / self.check_storage_id(storage_id)

    @staticmethod
    def check_storage_id(storage_id: str) -> str:
        if not _STORAGE_ID.fullmatch(storage_id):
            raise ValueError("a storage ID is 32 lowercase hex digits")
        return storage_id

    def ensure_workdir(self) -> None:
        """Scale-out: this node's own folder (staged manifests, admin socket, TLS files)."""
        for folder in (self.root, self.tls_dir):
            if make_dir(folder):
                fsync_dir(folder.parent)


def make_dir(path: Path) -> bool:
    """Create a folder (and its parents) with mode 0700; True if this call created it."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise StrongroomError(f"{path} exists and is not a folder") from None
        return False
    return True


def write_new_file(path: Path, data: bytes, mode: int) -> bool:
    """Durably create `path` with `data` unless it exists; True if this call created it.

    The bytes go to a private temporary file that is fsync'd and then hard-linked into place,
    which fails if the name is taken: of two racing processes exactly one wins, and nobody ever
    sees a partial file.
    """
    tmp = _durable_temp(path, data, mode)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: a plain rename, checked first
            if path.exists():
                return False
            os.replace(tmp, path)
        fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _durable_temp(path: Path, data: bytes, mode: int) -> Path:
    """`data` in a new private file next to `path`, fsync'd; the caller moves or removes it."""
    tmp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    return tmp


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Durably make `path` hold `data` (unless it already does): a private temporary file,
    fsync'd, renamed over it. Readers see the old bytes or the new, never a mix."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    tmp = _durable_temp(path, data, mode)
    try:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
