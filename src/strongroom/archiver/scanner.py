"""Stage 1, the scanner: list every folder of the source, depth-first, on its own thread.

For each folder it yields a `Listing`: the entries with their `lstat` results (excluded names
already left out) and a signature of those results, which is what the local cache compares to
recognise an unchanged folder. It runs ahead of the rest of the backup, up to a bounded number
of entries, and can start before the repository is even unlocked: the password's key
derivation releases the interpreter lock, so listing overlaps it.

The order is fixed: a folder is listed before its subfolders, which follow in the order of its
entries. The coordinator walks the same order and checks each listing's path against it.
"""

from __future__ import annotations

import itertools
import marshal
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import blake3

from .. import tree
from ..errors import StrongroomError
from ..excludes import ExcludeMatcher
from ..fsmeta import KINDS, node_type

Item = tuple[str, str, str, os.stat_result]  # name, full path, kind, lstat result

# How far the scanner may run ahead of the coordinator, in entries: about 550 bytes each
# (the stat result, the name and the path), so at most ~9 MiB of listings wait.
MAX_AHEAD = 16384


@dataclass(slots=True)
class Listing:
    path: str  # absolute path; "" for the synthetic root that holds the backed-up paths
    items: list[Item]
    readable: bool = True
    own_sig: bytes = b""
    subdirs: list[tuple[str, str]] = field(default_factory=list)  # (name, full) of folders
    nfiles: int = 0  # entries that are not folders
    nbytes: int = 0  # sizes of the regular files


def signature(items: list[Item]) -> bytes:
    """What must be unchanged for a folder's own entries to be taken as unchanged. uid, gid
    and mode changes also change ctime, so these fields cover them."""
    fields = [
        (n, s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for n, _f, _k, s in items
    ]
    return blake3.blake3(marshal.dumps(fields, _MARSHAL_VERSION)).digest()


# Version 2: no back-references, whose use depends on reference counts (so on the code that
# built the tuples); the bytes depend only on the values.
_MARSHAL_VERSION = 2


def _summarise(listing: Listing) -> Listing:
    listing.own_sig = signature(listing.items)
    nfiles = nbytes = 0
    subdirs = listing.subdirs
    for name, full, kind, st in listing.items:
        if kind == tree.DIR:
            subdirs.append((name, full))
        else:
            nfiles += 1
            if kind == tree.FILE:
                nbytes += st.st_size
    listing.nfiles, listing.nbytes = nfiles, nbytes
    return listing


def check_roots(paths: list[str]) -> list[Item]:
    """The paths to back up as the root's entries, named by their base names."""
    if not paths:
        raise StrongroomError("nothing to back up: give at least one path")
    roots: list[Item] = []
    names: set[str] = set()
    for raw in paths:
        full = os.path.abspath(raw)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            raise StrongroomError(f"{raw}: no such file or folder") from None
        except OSError as exc:
            raise StrongroomError(f"{raw}: cannot read ({exc.strerror})") from None
        name = os.path.basename(full.rstrip("/\\")) or full.strip("/\\") or "root"
        if name in names:
            raise StrongroomError(
                f"two paths to back up share the name '{name}'; back them up separately"
            )
        names.add(name)
        kind = node_type(st)
        if kind is None:
            raise StrongroomError(f"{full}: cannot back up this kind of file")
        roots.append((name, full, kind, st))
    return roots


class Scanner:
    """Lists the source on a thread; `next()` hands the listings out in walk order."""

    def __init__(self, paths: list[str], excludes: ExcludeMatcher | None = None) -> None:
        # Taken before the first lstat: a file modified after this could be rewritten within the
        # same timestamp tick unnoticed (see the coordinator's racy-file rule).
        self.started_ns = time.time_ns()
        self.started = time.monotonic()
        self.excludes = excludes
        self._warnings: list[str] = []
        self._warn_cb: Callable[[str], None] | None = None
        self._warn_lock = threading.Lock()
        self.root = _summarise(Listing("", check_roots(paths)))
        self.paths = [full for _n, full, _k, _s in self.root.items]
        self._ready: deque[Listing] = deque()
        self._ahead = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(target=self._run, name="scanner", daemon=True)
        self._thread.start()

    # ---- consumer side -----------------------------------------------------------------------

    def next(self, path: str) -> Listing:
        """The listing of `path`, which must be the next folder in walk order."""
        with self._cond:
            while not self._ready:
                if self._error is not None:
                    raise self._error
                if self._done:
                    raise RuntimeError(f"scanner ended before {path!r}")
                self._cond.wait()
            listing = self._ready.popleft()
            self._ahead -= len(listing.items) + 1
            self._cond.notify_all()
        if listing.path != path:
            raise RuntimeError(f"scanner order: expected {path!r}, got {listing.path!r}")
        return listing

    def peek(self, start: int, stop: int) -> list[Listing]:
        """Listings made and not yet taken, [start:stop] of them (to prefetch for them)."""
        with self._cond:
            return list(itertools.islice(self._ready, start, stop))

    def on_warning(self, warn: Callable[[str], None]) -> None:
        """Report warnings (unreadable folders and entries) to `warn`, the earlier ones now."""
        with self._warn_lock:
            early, self._warnings = self._warnings, []
            self._warn_cb = warn
        for message in early:
            warn(message)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._ready.clear()
            self._cond.notify_all()
        self._thread.join()

    # ---- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            stack = [iter(self.root.subdirs)]
            while stack:
                nxt = next(stack[-1], None)
                if nxt is None:
                    stack.pop()
                    continue
                listing = self._list(nxt[1])
                if not self._put(listing):
                    return
                stack.append(iter(listing.subdirs))
        except BaseException as exc:  # handed to the consumer
            with self._cond:
                self._error = exc
                self._cond.notify_all()
            return
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def _put(self, listing: Listing) -> bool:
        cost = len(listing.items) + 1
        with self._cond:
            while self._ahead > 0 and self._ahead + cost > MAX_AHEAD and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return False
            self._ready.append(listing)
            self._ahead += cost
            self._cond.notify_all()
        return True

    def _warn(self, message: str) -> None:
        with self._warn_lock:
            if self._warn_cb is None:
                self._warnings.append(message)
                return
        self._warn_cb(message)

    def _list(self, path: str) -> Listing:
        """One folder, in one pass: entries, signature fields, subfolders and counts."""
        items: list[Item] = []
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            self._warn(f"{path}: cannot read folder ({exc.strerror}); stored as empty")
            return Listing(path, items, readable=False)
        entries.sort(key=_BY_NAME)  # any fixed order will do; trees sort by bytes themselves
        # This loop runs once per file on every backup: locals instead of attribute lookups.
        excluded = self.excludes.excluded if self.excludes else None
        kind_of = KINDS.get
        append = items.append
        fields: list[tuple[str, int, int, int, int, int]] = []
        sig = fields.append
        subdirs: list[tuple[str, str]] = []
        nfiles = nbytes = 0
        for entry in entries:
            full = entry.path
            if excluded is not None and excluded(full):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                self._warn(f"{full}: cannot stat ({exc.strerror}); skipped")
                continue
            mode = st.st_mode
            kind = kind_of(mode & 0o170000)
            if kind is None:
                self._warn(f"{full}: unknown file type; skipped")
                continue
            name = entry.name
            append((name, full, kind, st))
            size = st.st_size
            sig((name, mode, size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
            if kind == DIR:
                subdirs.append((name, full))
            else:
                nfiles += 1
                if kind == FILE:
                    nbytes += size
        own_sig = blake3.blake3(marshal.dumps(fields, _MARSHAL_VERSION)).digest()
        return Listing(path, items, True, own_sig, subdirs, nfiles, nbytes)


_BY_NAME = operator.attrgetter("name")
DIR, FILE = tree.DIR, tree.FILE
