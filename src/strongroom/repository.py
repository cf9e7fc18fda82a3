"""The client's view of a repository: keys plus blob and snapshot storage.

`Repository` is the interface the archiver, restorer and checker use. `LocalRepository` talks
to a PackStore in-process (the `--repo DIR` mode); the network client implements the same
interface over the protocol, so the engine does not know where its data lives.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from . import crypto
from .blobs import CodecPool
from .errors import RepositoryError
from .keys import KeyFile, RepoKeys, create_keyfile, unlock
from .recovery import RecoveryKey
from .snapshot import Snapshot, open_snapshot
from .store import PackStore, SnapshotRow


class Repository(Protocol):
    keys: RepoKeys
    codecs: CodecPool

    @property
    def repo_id(self) -> str: ...
    def known_blob_ids(self) -> set[bytes]: ...
    def add_blob(self, blob_id: bytes, blob_type: int, stored: bytes) -> None: ...
    def flush(self) -> None: ...
    def read_blobs(self, blob_ids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]: ...
    def commit_snapshot(
        self,
        snap_id: str,
        time_ns: int,
        record: bytes,
        manifest: Iterable[bytes],
        series: str = "",
        *,
        root: bytes | None = None,
    ) -> None: ...
    def snapshot_rows(self) -> list[SnapshotRow]: ...
    def snapshot_manifest(self, snap_id: str) -> set[bytes]: ...
    def iter_all_blobs(self) -> Iterator[tuple[bytes, bool, bytes]]: ...
    def storage_problems(self) -> list[str]: ...
    def change_password(self, new_password: bytes) -> None: ...
    def delete_snapshot(self, snap_id: str) -> bool: ...
    def set_protected(self, snap_id: str, protected: bool) -> bool: ...
    def prune(self, *, dry_run: bool = False) -> dict[str, Any]: ...
    def bytes_uploaded(self) -> int: ...
    def close(self) -> None: ...


def load_snapshots(repo: Repository) -> list[Snapshot]:
    aead = repo.keys.aead()
    return [open_snapshot(aead, row) for row in repo.snapshot_rows()]


class LocalRepository:
    """A repository folder on a local (or mounted) filesystem."""

    def __init__(self, store: PackStore, keys: RepoKeys, keyfile: KeyFile) -> None:
        self.store = store
        self.keys = keys
        self.keyfile = keyfile
        self.codecs = CodecPool(keys.aead(), keys.hasher())

    @staticmethod
    def init(
        path: Path,
        password: bytes,
        kdf: crypto.KdfParams | None = None,
        *,
        recovery: RecoveryKey | None = None,
    ) -> LocalRepository:
        keys = RepoKeys.generate()
        keyfile = create_keyfile(
            password, keys, kdf, recovery=recovery.wrap(keys) if recovery else None
        )
        # The key file goes in with the index in one step: a killed init leaves no repository
        # rather than one nobody can open.
        store = PackStore.create(
            path,
            meta={"keyfile": keyfile.to_json().encode(), "repo_id": os.urandom(16).hex().encode()},
        )
        return LocalRepository(store, keys, keyfile)

    @staticmethod
    def open(
        path: Path,
        password: bytes | None,
        *,
        writer: bool = False,
        recovery: RecoveryKey | None = None,
    ) -> LocalRepository:
        """Open with the password, or (`strongroom recover`) with the recovery key."""
        if not path.exists():
            raise RepositoryError(f"repository folder {path} does not exist")
        store = PackStore(path, writer=writer)
        try:
            raw = store.get_meta("keyfile")
            if raw is None:
                raise RepositoryError(f"repository at {path} has no key file")
            keyfile = KeyFile.from_json(raw)
            if recovery is not None:
                if keyfile.recovery is None:
                    raise RepositoryError(f"repository at {path} has no recovery key")
                keys = recovery.unwrap(keyfile.recovery)
            elif password is not None:
                keys = unlock(keyfile, password)
            else:
                raise ValueError("open needs a password or a recovery key")
        except BaseException:
            store.close()
            raise
        return LocalRepository(store, keys, keyfile)

    @property
    def repo_id(self) -> str:
        raw = self.store.get_meta("repo_id")
        return raw.decode() if raw else "unknown"

    def change_password(self, new_password: bytes, kdf: crypto.KdfParams | None = None) -> None:
        """New salt and wrapping for the new password; the recovery wrapping is kept. The
        cost is the client's floor or the repository's present one, whichever is higher."""
        if kdf is None:
            floor, now = crypto.kdf_floor(), self.keyfile.kdf
            kdf = crypto.KdfParams(
                max(floor.memory_kib, now.memory_kib), max(floor.iterations, now.iterations)
            )
        self._set_keyfile(
            create_keyfile(new_password, self.keys, kdf, recovery=self.keyfile.recovery)
        )

    def set_recovery(self, wrapped: bytes | None) -> None:
        self._set_keyfile(self.keyfile.with_recovery(wrapped))

    def _set_keyfile(self, keyfile: KeyFile) -> None:
        self.store.set_meta("keyfile", keyfile.to_json().encode())  # one SQLite transaction
        self.keyfile = keyfile

    def known_blob_ids(self) -> set[bytes]:
        return self.store.all_blob_ids()

    def add_blob(self, blob_id: bytes, blob_type: int, stored: bytes) -> None:
        self.store.add_blob(blob_id, blob_type, stored)

    def flush(self) -> None:
        self.store.flush()

    def read_blobs(self, blob_ids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
        return self.store.read_blobs(blob_ids)

    def commit_snapshot(
        self,
        snap_id: str,
        time_ns: int,
        record: bytes,
        manifest: Iterable[bytes],
        series: str = "",
        *,
        root: bytes | None = None,
    ) -> None:
        self.store.commit_snapshot(snap_id, time_ns, record, manifest, series, root=root)

    def set_protected(self, snap_id: str, protected: bool) -> bool:
        return self.store.set_protected(snap_id, protected)

    def prune(self, *, dry_run: bool = False) -> dict[str, Any]:
        """GC in this process: the local writer lock keeps backups out, so nothing waits."""
        from .store.gc import collect_garbage

        return collect_garbage(self.store, dry_run=dry_run).to_json()

    def snapshot_rows(self) -> list[SnapshotRow]:
        return self.store.list_snapshots()

    def snapshot_manifest(self, snap_id: str) -> set[bytes]:
        return self.store.snapshot_manifest(snap_id)

    def iter_all_blobs(self) -> Iterator[tuple[bytes, bool, bytes]]:
        return self.store.iter_verified()

    def storage_problems(self) -> list[str]:
        return self.store.storage_problems()

    def delete_snapshot(self, snap_id: str) -> bool:
        return self.store.delete_snapshot(snap_id)

    def bytes_uploaded(self) -> int:
        return self.store.bytes_written

    def close(self) -> None:
        self.store.close()
