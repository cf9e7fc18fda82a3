"""Server-side storage: pack files of encrypted blobs plus an SQLite index.

The same code backs a local `--repo` folder and, on the server, each user's storage. It never
holds a key: it sees blob IDs, sizes, checksums of encrypted bytes, and snapshot manifests.
"""

from .packstore import BlobLocation, PackMissing, PackStore, SnapshotRow

__all__ = ["BlobLocation", "PackMissing", "PackStore", "SnapshotRow"]
