"""`strongroom mount`: the user's snapshots as a read-only file system.

`layout` names the snapshots (time-based, unique), `blobsource` fetches and decrypts blobs on
demand through a bounded on-disk cache of ciphertext (`diskcache`), `view` answers
file-system questions (attributes, listings, reads, xattrs) for any path without knowing
about FUSE, and `fuse_ops` is the thin adapter that serves the view through libfuse 3
(mfusepy). Only `fuse_ops` imports the binding, so everything else is testable without FUSE.
"""
