"""The deployment `strongroom-admin` works on (`Admin`): its own module, importing none of
the command modules or the menu, so that they can all name it without an import cycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..server.backend import Backend, Storage
from ..server.config import ServerConfig, load_config
from ..server.datadir import DataDir
from ..server.opener import open_backend
from ..server.userdb import User, UserDB


class Admin:
    """The deployment the admin works on (embedded data folder, or PostgreSQL + S3), opened
    on first use (so --help touches nothing)."""

    def __init__(self, settings: dict[str, Any], config_file: Path | None = None) -> None:
        self._settings = settings
        self._config_file = config_file
        self._backend: Backend | None = None

    @property
    def config(self) -> ServerConfig:
        return load_config(self._config_file, self._settings)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = open_backend(self.config)
        return self._backend

    @property
    def datadir(self) -> DataDir:
        return self.backend.datadir

    @property
    def db(self) -> UserDB:
        return self.backend.userdb

    @property
    def storage(self) -> Storage:
        return self.backend.storage

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def existing(self, name: str) -> User:
        user = self.db.get(name)
        if user is None:
            raise UsageError(f"no user {name} (see 'strongroom-admin user list')")
        return user

    def storage_in_use(self, storage_id: str) -> bool:
        """Held by the server answering on this data folder's socket, or by a live session
        on any node (scale-out)."""
        from ..server.control import storage_in_use

        return storage_in_use(self.datadir.root, storage_id) or self.backend.sessions.in_use(
            storage_id
        )
