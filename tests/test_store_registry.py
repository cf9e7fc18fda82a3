"""StoreRegistry: the stores a server node has open, shared by the sessions of one user.

The last holder's release closes the store outside the registry's lock (a close flushes, which
may wait on the object store); a session that logs in meanwhile must wait for that close and
open the store again, not meet the writer lock the closing store still holds ("in use by
another backup"), and a purge must see the store as held until the close has ended.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from strongroom.server.backend import open_embedded
from strongroom.server.stores import StoreRegistry, UserStore


def test_a_login_during_the_last_release_waits_for_the_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = open_embedded(tmp_path / "data")
    storage_id = os.urandom(16).hex()
    backend.storage.create(storage_id)
    registry = StoreRegistry(backend.storage, backend.sessions)
    closing = threading.Event()
    original = UserStore.close

    def slow_close(self: UserStore) -> None:
        closing.set()
        time.sleep(0.5)  # a flush to a slow object store
        original(self)

    monkeypatch.setattr(UserStore, "close", slow_close)
    first = object()
    store = registry.acquire(storage_id, first)
    store.put([(os.urandom(32), 0, os.urandom(200))])  # buffered: the close flushes it
    releasing = threading.Thread(target=registry.release, args=(storage_id, first))
    releasing.start()
    assert closing.wait(5)
    assert registry.is_open(storage_id)  # still held while it closes: no purge now
    second = object()
    again = registry.acquire(storage_id, second)  # waits for the close, then reopens
    releasing.join(5)
    assert again is not store and len(again.store.all_blob_ids()) == 1
    registry.release(storage_id, second)
    assert not registry.is_open(storage_id)
    backend.close()
