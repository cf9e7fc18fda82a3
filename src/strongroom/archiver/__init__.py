"""Backup as a pipeline of named stages, one module each (modelled on restic's archiver):

- `scanner`: lists the source folders depth-first on a thread, with their lstat signatures;
- `changes`: decides per folder and file what changed since the parent snapshot;
- `parent`: the parent snapshot's trees, fetched ahead in batches;
- `file_saver`: reads changed files (small ones bundled in worker processes, large ones chunked
  in threads);
- `blob_saver`: stores every new blob once;
- `tree_saver`: finishes folders in post-order into tree blobs, the manifest and the cache;
- `coordinator`: wires them (`Archiver`) and commits the snapshot.

docs/FORMAT.md ("Backup pipeline") describes the whole.
"""

from __future__ import annotations

from .coordinator import Archiver, BackupResult
from .scanner import Scanner

__all__ = ["Archiver", "BackupResult", "Scanner"]
