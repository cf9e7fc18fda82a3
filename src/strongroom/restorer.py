"""Restore: recreate a snapshot under a target folder, verifying every blob.

Safety rules (docs/SECURITY.md): every name is checked to be a single plain component; folders
are created by us or checked; files are opened with O_NOFOLLOW; symlinks are made last, so
nothing is ever written through a link; hard links only point at files this restore made. A
malicious tree can therefore not make restore write outside the target.

A local user may also swap a folder for a link while the restore runs (root restoring over an
existing tree). So every operation is relative to a descriptor of its folder (openat and
friends), never a full path: folders are opened one component at a time with
O_NOFOLLOW|O_DIRECTORY, and the (st_dev, st_ino) recorded when a folder was made or checked must
match whenever it is opened again. Platforms without dir_fd support (Windows) use full paths.

Extended attributes are set on the restore's own descriptors after the owner (a chown clears
security.capability) and before the mode and times; file flags (immutable, append-only) are
set at the very end, when nothing more is written, linked or changed. Sparse files are created
at their full size and only their data is written, so their holes stay holes.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Container, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import tree
from .errors import IntegrityError, StrongroomError
from .fsattrs import FLAGS, clear_locking
from .pathsafe import is_safe_name, split_include
from .repository import Repository
from .restore_attrs import AttrWriter
from .snapshot import Snapshot
from .sparse import HoleMap
from .tree import Node

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# Folders we only look up names in are opened with O_PATH where Linux has it: that needs no
# read permission on the folder (a restore run again over a mode 0311 folder of the snapshot).
_O_PATH = getattr(os, "O_PATH", 0)
_DIR_FLAGS = (_O_PATH or os.O_RDONLY) | _O_DIRECTORY | _O_NOFOLLOW
_META_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW  # fchown/fchmod refuse O_PATH ones
# What opening a name with O_NOFOLLOW|O_DIRECTORY says when it is a link or not a folder
# (FreeBSD answers EMLINK for a link).
_NOT_A_FOLDER = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EMLINK})
_FLAG_OPEN = os.O_RDONLY | _O_BINARY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)
_MAX_DEPTH = 4096
_IN_FLIGHT = 16  # blobs decoded/written concurrently; bounds memory
_DIR_FD_CACHE = 256  # folder descriptors kept open; far below any RLIMIT_NOFILE

_AT_FUNCTIONS = [os.open, os.mkdir, os.stat, os.unlink, os.symlink, os.link, os.chown, os.chmod]
_AT_FUNCTIONS += [getattr(os, name) for name in ("mkfifo", "mknod") if hasattr(os, name)]
DIR_FD_SUPPORTED = (
    bool(_O_DIRECTORY and _O_NOFOLLOW)
    and all(f in os.supports_dir_fd for f in _AT_FUNCTIONS)
    and os.utime in os.supports_fd
    and hasattr(os, "fchown")
    and hasattr(os, "fchmod")
)


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    bytes_written: int = 0
    duration: float = 0.0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # informational: not a failed restore


@dataclass(eq=False, slots=True)
class _Dir:
    """A folder of the restore, and which inode it was when the restore made or checked it."""

    path: str
    name: str
    parent: _Dir | None
    depth: int
    ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino)


@dataclass(eq=False)
class _FileJob:
    dir: _Dir
    node: Node
    path: str
    remaining: int  # content refs still to write
    lock: threading.Lock = field(default_factory=threading.Lock)
    holes: HoleMap | None = None  # a sparse file: where its data goes
    ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino) once written, for setting its flags


@dataclass(eq=False, slots=True)
class _Slot:
    fd: int
    users: int = 0
    evicted: bool = False  # out of the cache: closed when the last user releases it


class _DirFds:
    """Descriptors of the restore's folders: a bounded LRU shared by the writer threads.

    A folder that fell out of the cache is opened again from its nearest cached ancestor, one
    component at a time with O_NOFOLLOW|O_DIRECTORY, and each must still be the inode recorded
    when the restore made or checked it. A descriptor a thread holds is closed only when the last
    holder releases it, so eviction never pulls it from under a write.
    """

    def __init__(self, root: _Dir, root_fd: int, limit: int) -> None:
        self.root = root
        self._root_slot = _Slot(root_fd)
        self._limit = max(1, limit)
        self._slots: OrderedDict[_Dir, _Slot] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, d: _Dir) -> _Slot:
        with self._lock:
            if d is self.root:
                slot = self._root_slot
            else:
                found = self._slots.get(d)
                if found is None:
                    slot = self._reopen(d)
                else:
                    self._slots.move_to_end(d)
                    slot = found
            slot.users += 1
            return slot

    def release(self, slot: _Slot) -> None:
        with self._lock:
            slot.users -= 1
            if slot.evicted and slot.users == 0:
                os.close(slot.fd)

    def add(self, d: _Dir, fd: int) -> None:
        """A folder the walk just made or checked (d.ident already recorded)."""
        with self._lock:
            self._insert(d, _Slot(fd))

    def open_fresh(self, d: _Dir, flags: int) -> int:
        """A new descriptor of `d`, looked up by name in its parent now and checked; the caller
        closes it. A cached descriptor would still reach a folder that was moved away."""
        assert d.parent is not None
        parent = self.acquire(d.parent)
        try:
            return _open_child(parent.fd, d, flags)
        finally:
            self.release(parent)

    def verify(self, d: _Dir) -> None:
        """Raise if `d`, or a folder above it, is no longer where the restore made it."""
        chain: list[_Dir] = []
        cur = d
        while cur.parent is not None:
            chain.append(cur)
            cur = cur.parent
        fd = self._root_slot.fd
        try:
            for x in reversed(chain):
                child = _open_child(fd, x)
                if fd != self._root_slot.fd:
                    os.close(fd)
                fd = child
        finally:
            if fd != self._root_slot.fd:
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            for slot in self._slots.values():
                self._evict(slot)
            self._slots.clear()
            os.close(self._root_slot.fd)

    def _reopen(self, d: _Dir) -> _Slot:
        chain: list[_Dir] = []
        cur = d
        while cur is not self.root and cur not in self._slots:
            chain.append(cur)
            assert cur.parent is not None
            cur = cur.parent
        fd = self._root_slot.fd if cur is self.root else self._slots[cur].fd
        opened: list[tuple[_Dir, int]] = []
        try:
            for x in reversed(chain):
                fd = _open_child(fd, x)
                opened.append((x, fd))
        except BaseException:
            for _x, ofd in opened:
                os.close(ofd)
            raise
        # Inserted only now: an eviction cannot close the ancestor the walk above started from.
        for x, ofd in opened:
            self._insert(x, _Slot(ofd))
        return self._slots[d]

    def _insert(self, d: _Dir, slot: _Slot) -> None:
        old = self._slots.pop(d, None)
        if old is not None:
            self._evict(old)
        self._slots[d] = slot
        while len(self._slots) > self._limit:
            _oldest, victim = self._slots.popitem(last=False)
            self._evict(victim)

    @staticmethod
    def _evict(slot: _Slot) -> None:
        slot.evicted = True
        if slot.users == 0:
            os.close(slot.fd)


class _CannotOpen(StrongroomError):
    def __init__(self, path: str, exc: OSError) -> None:
        super().__init__(f"cannot open folder {path}: {exc.strerror}")
        self.errno = exc.errno
        self.strerror = exc.strerror


def _open_child(parent_fd: int, d: _Dir, flags: int = _DIR_FLAGS) -> int:
    """Open folder `d` by name in its parent, never through a link, and check its identity."""
    try:
        fd = os.open(d.name, flags, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in _NOT_A_FOLDER or exc.errno == errno.ENOENT:
            raise _moved(d) from None
        raise _CannotOpen(d.path, exc) from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != d.ident:
        os.close(fd)
        raise _moved(d)
    return fd


def _moved(d: _Dir) -> StrongroomError:
    return StrongroomError(
        f"folder {d.path} was moved or replaced during the restore (by a link or another "
        "folder); stopped without writing through it"
    )


class Restorer:
    def __init__(
        self,
        repo: Repository,
        warn: Callable[[str], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        workers: int | None = None,
        note: Callable[[str], None] | None = None,
        use_dir_fds: bool | None = None,
        allow_foreign_owners: bool = False,
    ) -> None:
        self.repo = repo
        self._warn_cb = warn
        self._note_cb = note
        self.progress = progress or (lambda _f, _b: None)
        self.workers = max(1, workers or os.cpu_count() or 2)
        self.result = RestoreResult()
        self._root_uid = hasattr(os, "geteuid") and os.geteuid() == 0
        # Descriptor-relative operations where the platform has them; full paths otherwise.
        self.uses_dir_fds = DIR_FD_SUPPORTED if use_dir_fds is None else use_dir_fds
        self._fds: _DirFds | None = None
        self.allow_foreign_owners = allow_foreign_owners
        self._euid = os.geteuid() if hasattr(os, "geteuid") else None
        self._attrs = AttrWriter()
        self._flagged: list[_FileJob] = []  # files whose flags are set last
        self._flagged_dirs: list[tuple[_Dir, Node]] = []

    def restore(
        self, snap: Snapshot, target: str, includes: list[str] | None = None
    ) -> RestoreResult:
        started = time.monotonic()
        wanted = [split_include(i) for i in includes or []]
        root = self._prepare_target(target)
        try:
            files: list[_FileJob] = []
            dirs: list[tuple[_Dir, Node | None]] = []
            specials: list[tuple[_Dir, Node]] = []
            self._walk(bytes.fromhex(snap.tree), root, (), wanted, files, dirs, specials)
            self._write_contents(files)
            self._make_specials(specials)
            # Deepest first, so a folder's time and mode are set after everything inside it.
            for d, node in sorted(dirs, key=lambda e: e[0].depth, reverse=True):
                self._set_dir_meta(d, node)
            self._set_flags()
        finally:
            for message in self._attrs.warnings():
                self._warn(message)
            if self._fds is not None:
                self._fds.close()
                self._fds = None
        if wanted and not self.result.files and not self.result.dirs:
            raise StrongroomError("nothing in the snapshot matches the --include paths")
        self.result.duration = time.monotonic() - started
        return self.result

    # ---- planning ----------------------------------------------------------------------------

    def _prepare_target(self, target: str) -> _Dir:
        base = os.path.abspath(target)
        existed = os.path.lexists(base)
        try:
            os.makedirs(base, exist_ok=True)
        except OSError as exc:
            raise StrongroomError(f"cannot create target folder {target}: {exc.strerror}") from None
        # The target itself is the user's choice and may be a link to a folder (another disk):
        # resolve it once. Everything below it is created by us and never followed.
        base = os.path.realpath(base)
        if not self.uses_dir_fds:
            st = os.lstat(base)
            if not stat.S_ISDIR(st.st_mode):
                raise StrongroomError(f"target {target} is not a folder")
            if existed:
                self._refuse_foreign(base, st)
            return _Dir(base, "", None, 0, (st.st_dev, st.st_ino))
        try:
            fd = os.open(base, _DIR_FLAGS)
        except OSError as exc:
            if exc.errno in _NOT_A_FOLDER:
                raise StrongroomError(f"target {target} is not a folder") from None
            raise StrongroomError(f"cannot open target folder {target}: {exc.strerror}") from None
        st = os.fstat(fd)
        if existed:
            try:
                self._refuse_foreign(base, st)
            except StrongroomError:
                os.close(fd)
                raise
        root = _Dir(base, "", None, 0, (st.st_dev, st.st_ino))
        self._fds = _DirFds(root, fd, _DIR_FD_CACHE)
        return root

    def _walk(
        self,
        root_tree: bytes,
        root: _Dir,
        prefix: tuple[str, ...],
        wanted: list[tuple[str, ...]],
        files: list[_FileJob],
        dirs: list[tuple[_Dir, Node | None]],
        specials: list[tuple[_Dir, Node]],
    ) -> None:
        # Breadth-first, one level at a time, so each level's trees are fetched in one request
        # (one index query, packs read in order) instead of one round trip per folder.
        level: list[tuple[bytes, _Dir, tuple[str, ...]]] = [(root_tree, root, prefix)]
        codec = self.repo.codecs.get()
        while level:
            if len(level[0][2]) > _MAX_DEPTH:
                raise IntegrityError("snapshot tree is nested implausibly deep; refusing")
            asked = {t for t, _f, _r in level}
            decoded: dict[bytes, list[Node]] = {}
            for bid, stored in self.repo.read_blobs(asked):
                _check_arrival(bid, asked, decoded)
                decoded[bid] = tree.decode_tree(codec.decode(bid, stored))
            _check_complete(len(asked) - len(decoded))
            stack, level = level, []
            for tree_id, folder, rel in stack:
                self._walk_one(decoded[tree_id], folder, rel, wanted, files, dirs, specials, level)

    def _walk_one(
        self,
        nodes: list[Node],
        folder: _Dir,
        rel: tuple[str, ...],
        wanted: list[tuple[str, ...]],
        files: list[_FileJob],
        dirs: list[tuple[_Dir, Node | None]],
        specials: list[tuple[_Dir, Node]],
        next_level: list[tuple[bytes, _Dir, tuple[str, ...]]],
    ) -> None:
        seen: set[bytes] = set()  # names as the filesystem sees them: 'é' == '\udcc3\udca9'
        slot: _Slot | None = None  # the folder's descriptor, taken once for all its subfolders
        try:
            for node in nodes:
                if not is_safe_name(node.name) or tree.name_key(node.name) in seen:
                    self._warn(
                        f"snapshot contains an unsafe or duplicate name {node.name!r}; skipped"
                    )
                    continue
                seen.add(tree.name_key(node.name))
                sub = (*rel, node.name)
                match = _match(sub, wanted)
                if match is None:
                    continue
                if node.type == tree.DIR:
                    if slot is None and self._fds is not None:
                        slot = self._fds.acquire(folder)
                    child = self._mkdir(folder, node.name, slot)
                    # Every folder is checked again at the end; only those inside an included
                    # path get their own metadata restored.
                    dirs.append((child, node if match else None))
                    if match:
                        self.result.dirs += 1
                    assert node.subtree is not None
                    next_level.append((node.subtree, child, sub))
                elif not match:
                    continue  # an ancestor-only match cannot select a file
                elif node.type == tree.FILE:
                    path = os.path.join(folder.path, node.name)
                    files.append(_FileJob(folder, node, path, len(node.content)))
                else:
                    specials.append((folder, node))
        finally:
            if slot is not None and self._fds is not None:
                self._fds.release(slot)

    def _mkdir(self, parent: _Dir, name: str, slot: _Slot | None) -> _Dir:
        path = os.path.join(parent.path, name)
        d = _Dir(path, name, parent, parent.depth + 1)
        if slot is None:  # by path
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise _not_a_folder(path) from None
                self._refuse_foreign(path, st)
            except OSError as exc:
                raise StrongroomError(f"cannot create {path}: {exc.strerror}") from None
            return d
        try:
            os.mkdir(name, 0o700, dir_fd=slot.fd)
            created = True
        except FileExistsError:
            created = False
        except OSError as exc:
            raise StrongroomError(f"cannot create {path}: {exc.strerror}") from None
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=slot.fd)
        except OSError as exc:
            if not created and exc.errno in _NOT_A_FOLDER:
                raise _not_a_folder(path) from None
            raise StrongroomError(f"cannot open {path}: {exc.strerror}") from None
        st = os.fstat(fd)
        if not created:
            try:
                self._refuse_foreign(path, st)
            except StrongroomError:
                os.close(fd)
                raise
            _unlock(slot.fd, name)  # made immutable by an earlier restore into this target
        d.ident = (st.st_dev, st.st_ino)
        assert self._fds is not None
        self._fds.add(d, fd)
        return d

    def _refuse_foreign(self, path: str, st: os.stat_result) -> None:
        # The owner of an existing folder can swap what is in it for links while the restore
        # runs (root restoring into other users' folders). Descriptors keep writes out of those
        # links, but links, FIFOs, devices and hard links are still made and chowned by name:
        # only with consent. A folder of root's can only be changed by root, who is trusted.
        if self._euid is None or self.allow_foreign_owners or st.st_uid in (self._euid, 0):
            return
        raise StrongroomError(
            f"{path} already exists and is owned by another user (uid {st.st_uid}), who could "
            "swap what is in it for links during the restore; restore elsewhere, or give "
            "--allow-foreign-owners to restore into it anyway"
        )

    # ---- contents ----------------------------------------------------------------------------

    def _write_contents(self, files: list[_FileJob]) -> None:
        plan: dict[bytes, list[tuple[_FileJob, int, int, int]]] = defaultdict(list)
        links: list[tuple[_FileJob, _FileJob]] = []
        first_by_link: dict[str, _FileJob] = {}
        for job in files:
            node = job.node
            if node.hardlink is not None:
                first = first_by_link.get(node.hardlink)
                if first is not None:
                    links.append((first, job))
                    continue
                first_by_link[node.hardlink] = job
            if node.holes:
                job.holes = HoleMap(node.holes)
            if len(node.content) != 1 or node.holes:
                self._create_file(job)  # one-piece files are created when their piece arrives
            pos = 0  # in the file's data: its content pieces back to back
            for ref in node.content:
                plan[ref.blob_id].append((job, pos, ref.offset, ref.length))
                pos += ref.length
            pos += sum(length for _start, length in node.holes)
            if pos != node.size:
                self._warn(f"{job.path}: snapshot sizes disagree; restored {pos} bytes")
            if not node.content:
                self._finish_file(job, None)
        codec_pool = self.repo.codecs
        sem = threading.BoundedSemaphore(_IN_FLIGHT)
        errors: list[BaseException] = []

        def work(blob_id: bytes, stored: bytes) -> None:
            try:
                plain = codec_pool.get().decode(blob_id, stored)
                for job, pos, off, length in plan[blob_id]:
                    if off + length > len(plain):
                        raise IntegrityError(f"{job.path}: content reference outside its blob")
                    try:
                        self._write_piece(job, pos, memoryview(plain)[off : off + length])
                    except OSError as exc:
                        raise self._write_failed(job, exc) from None
            except BaseException as exc:
                errors.append(exc)
            finally:
                sem.release()

        # Every planned blob must arrive exactly once: a repository (or server) that ends its
        # answer early must not leave holes in files behind an exit code of 0.
        received: set[bytes] = set()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="restore") as pool:
            for blob_id, stored in self.repo.read_blobs(plan.keys()):
                if errors:
                    break
                try:
                    _check_arrival(blob_id, plan, received)
                except IntegrityError as bad:
                    errors.append(bad)
                    break
                received.add(blob_id)
                sem.acquire()
                pool.submit(work, blob_id, stored)
        if not errors:
            _check_complete(len(plan) - len(received))
        if errors:
            exc = errors[0]
            if isinstance(exc, StrongroomError):
                raise exc
            if isinstance(exc, OSError):
                where = f"{exc.filename}: " if exc.filename else ""
                raise StrongroomError(
                    f"restore failed: {where}{exc.strerror or exc} (nothing is written through "
                    "links; restore into an empty folder)"
                ) from None
            raise exc
        for src, dst in links:
            try:
                self._link(src, dst)
                self.result.files += 1
            except OSError as exc:
                self._warn(f"{dst.path}: cannot create hard link ({exc.strerror})")

    def _write_failed(self, job: _FileJob, exc: OSError) -> StrongroomError:
        # A folder swapped under us shows up here as ENOENT or ELOOP: say what happened.
        if self._fds is not None:
            try:
                self._fds.verify(job.dir)
            except StrongroomError as moved:
                return moved
        return StrongroomError(
            f"restore failed: {job.path}: {exc.strerror or exc} (nothing is written through "
            "links; restore into an empty folder)"
        )

    @contextmanager
    def _at(self, d: _Dir, name: str) -> Iterator[tuple[str, int | None]]:
        """(name, folder descriptor) for the *at() calls, or (full path, None) without them."""
        if self._fds is None:
            yield os.path.join(d.path, name), None
            return
        slot = self._fds.acquire(d)
        try:
            yield name, slot.fd
        finally:
            self._fds.release(slot)

    def _open_file(self, job: _FileJob, flags: int) -> int:
        if self._fds is None:
            return os.open(job.path, flags, 0o600)
        slot = self._fds.acquire(job.dir)  # a dict lookup: no lookup of the path per blob
        try:
            try:
                return os.open(job.node.name, flags, 0o600, dir_fd=slot.fd)
            except PermissionError:
                if not flags & (os.O_WRONLY | os.O_RDWR) or not _unlock(slot.fd, job.node.name):
                    raise
                return os.open(job.node.name, flags, 0o600, dir_fd=slot.fd)
        finally:
            self._fds.release(slot)

    def _link(self, src: _FileJob, dst: _FileJob) -> None:
        with (
            self._at(src.dir, src.node.name) as (s, s_fd),
            self._at(dst.dir, dst.node.name) as (d, d_fd),
        ):
            try:
                os.link(s, d, src_dir_fd=s_fd, dst_dir_fd=d_fd, follow_symlinks=False)
            except FileExistsError:
                # Restoring again into the same target: keep a correct link, replace a file or
                # link left by an interrupted run (never a folder, never following anything).
                st = os.stat(d, dir_fd=d_fd, follow_symlinks=False)
                src_st = os.stat(s, dir_fd=s_fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (src_st.st_dev, src_st.st_ino):
                    return
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    raise
                os.unlink(d, dir_fd=d_fd)
                os.link(s, d, src_dir_fd=s_fd, dst_dir_fd=d_fd, follow_symlinks=False)

    def _create_file(self, job: _FileJob) -> None:
        try:
            fd = self._open_file(
                job, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_BINARY | _O_NOFOLLOW
            )
        except OSError as exc:
            raise StrongroomError(f"cannot create {job.path}: {exc.strerror}") from None
        try:
            if job.node.holes:
                os.ftruncate(fd, job.node.size)  # all hole; the data is written into it
        except OSError as exc:
            raise StrongroomError(f"cannot create {job.path}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def _write_piece(self, job: _FileJob, pos: int, data: memoryview) -> None:
        flags = os.O_WRONLY | _O_BINARY | _O_NOFOLLOW
        if len(job.node.content) == 1 and job.holes is None:
            flags |= os.O_CREAT | os.O_TRUNC
        fd = self._open_file(job, flags)
        try:
            if job.holes is not None:
                for offset, start, n in job.holes.place(pos, len(data)):
                    _pwrite_all(fd, data[start : start + n], offset)
            elif hasattr(os, "pwrite"):
                _pwrite_all(fd, data, pos)
            else:  # pragma: no cover - Windows
                os.lseek(fd, pos, os.SEEK_SET)
                os.write(fd, data)
            with job.lock:
                job.remaining -= 1
                last = job.remaining == 0
            if last:
                self._finish_file(job, fd)
        finally:
            os.close(fd)

    def _finish_file(self, job: _FileJob, fd: int | None) -> None:
        node = job.node
        own = fd is None
        if own:
            fd = self._open_file(job, os.O_RDONLY | _O_BINARY | _O_NOFOLLOW)
        assert fd is not None
        try:
            if self._root_uid:
                os.fchown(fd, node.uid, node.gid)
            self._attrs.xattrs(fd, node, job.path)
            if node.flags:
                st = os.fstat(fd)
                job.ident = (st.st_dev, st.st_ino)
                self._flagged.append(job)  # list.append is atomic: writer threads call this
            if hasattr(os, "fchmod"):
                os.fchmod(fd, node.mode)
            if os.utime in os.supports_fd:
                os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
            else:  # Windows: by path (the file was created by us, with O_NOFOLLOW semantics)
                os.utime(job.path, ns=(node.mtime_ns, node.mtime_ns))
        except OSError as exc:
            self._warn(f"{job.path}: cannot restore metadata ({exc.strerror})")
        finally:
            if own:
                os.close(fd)
        self.result.files += 1
        self.result.bytes_written += node.size
        self.progress(1, node.size)

    # ---- other entries -----------------------------------------------------------------------

    def _make_specials(self, specials: list[tuple[_Dir, Node]]) -> None:
        for folder, node in specials:
            path = os.path.join(folder.path, node.name)
            if node.type == tree.SOCKET:
                # A socket belongs to the process that listened on it; like tar and restic, do
                # not recreate it. Not a failure: nothing restorable was lost.
                self._note(f"{path}: socket not restored (sockets are recreated by their program)")
                continue
            with self._at(folder, node.name) as (name, dir_fd):
                try:
                    if not self._make_special(name, dir_fd, node):
                        self._warn(f"{path}: {node.type} not restored (not supported here)")
                        continue
                except FileExistsError:
                    # A restore into a target that already holds this entry (an interrupted
                    # restore run again): replace a link or FIFO, never anything else.
                    if not self._replace_special(name, dir_fd, node):
                        self._warn(f"{path}: exists and is not a link or FIFO; not replaced")
                        continue
                except OSError as exc:
                    self._warn(f"{path}: cannot create {node.type} ({exc.strerror})")
                    continue
                self._set_link_meta(name, dir_fd, path, node)
                self._attrs.xattrs_at(dir_fd, name, node, path)
            self.result.files += 1

    def _make_special(self, name: str, dir_fd: int | None, node: Node) -> bool:
        if node.type == tree.SYMLINK:
            assert node.target is not None
            os.symlink(node.target, name, dir_fd=dir_fd)
        elif node.type == tree.FIFO and hasattr(os, "mkfifo"):
            os.mkfifo(name, node.mode, dir_fd=dir_fd)
        elif node.type in (tree.CHARDEV, tree.BLOCKDEV) and self._root_uid:
            kind = stat.S_IFCHR if node.type == tree.CHARDEV else stat.S_IFBLK
            os.mknod(name, node.mode | kind, node.device, dir_fd=dir_fd)
        else:
            return False
        return True

    def _replace_special(self, name: str, dir_fd: int | None, node: Node) -> bool:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not (stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                return False
            os.unlink(name, dir_fd=dir_fd)  # removes the link itself, never what it points to
            return self._make_special(name, dir_fd, node)
        except OSError:
            return False

    def _set_link_meta(self, name: str, dir_fd: int | None, path: str, node: Node) -> None:
        # Links, FIFOs and devices cannot be opened safely (a device's open has effects), so
        # these work on the name in its folder, never following a link.
        try:
            if self._root_uid:
                os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
            if node.type != tree.SYMLINK:
                os.chmod(name, node.mode, dir_fd=dir_fd, follow_symlinks=False)
            if os.utime in os.supports_follow_symlinks:
                os.utime(
                    name,
                    ns=(node.mtime_ns, node.mtime_ns),
                    dir_fd=dir_fd,
                    follow_symlinks=False,
                )
        except (OSError, NotImplementedError) as exc:
            self._warn(f"{path}: cannot restore metadata ({getattr(exc, 'strerror', exc)})")

    def _set_dir_meta(self, d: _Dir, node: Node | None) -> None:
        if self._fds is None:
            if node is not None:
                self._set_dir_meta_by_path(d.path, node)
            return
        # Looked up by name again: a folder moved or replaced since the walk stops the restore
        # here, even if its descriptor was cached all along.
        try:
            fd = self._fds.open_fresh(d, _DIR_FLAGS if node is None else _META_FLAGS)
            where: int | str = fd
        except _CannotOpen as exc:
            if node is None or not _O_PATH or exc.errno != errno.EACCES:
                self._warn(f"{d.path}: cannot restore metadata ({exc.strerror})")
                return
            # A folder we may not read (restoring again over a mode 0311 folder, not as root):
            # its O_PATH descriptor, checked like any other, reaches that very inode via /proc.
            fd = self._fds.open_fresh(d, _DIR_FLAGS)
            where = f"/proc/self/fd/{fd}"
        try:
            if node is None:
                return
            if self._root_uid:
                os.chown(where, node.uid, node.gid)
            self._attrs.xattrs(where, node, d.path)
            os.chmod(where, node.mode)
            os.utime(where, ns=(node.mtime_ns, node.mtime_ns))
            if node.flags:
                self._flagged_dirs.append((d, node))
        except OSError as exc:
            self._warn(f"{d.path}: cannot restore metadata ({exc.strerror})")
        finally:
            os.close(fd)

    def _set_dir_meta_by_path(self, path: str, node: Node) -> None:
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                return
            if self._root_uid:
                os.lchown(path, node.uid, node.gid)
            self._attrs.xattrs(path, node, path, follow=False)
            os.chmod(path, node.mode)
            os.utime(path, ns=(node.mtime_ns, node.mtime_ns))
        except OSError as exc:
            self._warn(f"{path}: cannot restore metadata ({exc.strerror})")

    def _set_flags(self) -> None:
        """File flags, last: an immutable or append-only file or folder takes no more changes.
        Each is opened again by name in its folder and must be the inode the restore made."""
        if self._fds is None:
            return  # only Linux has them, and it has descriptor-relative calls
        for job in self._flagged:
            try:
                with self._at(job.dir, job.node.name) as (name, dir_fd):
                    fd = os.open(name, _FLAG_OPEN, dir_fd=dir_fd)
            except OSError as exc:
                self._attrs.flags_failed(job.node, exc, job.path)
                continue
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == job.ident:
                    self._attrs.flags(fd, job.node, job.path)
            finally:
                os.close(fd)
        for d, node in sorted(self._flagged_dirs, key=lambda e: e[0].depth, reverse=True):
            try:
                fd = self._fds.open_fresh(d, _META_FLAGS)
            except _CannotOpen as exc:
                self._attrs.flags_failed(node, OSError(exc.errno, exc.strerror), d.path)
                continue
            try:
                self._attrs.flags(fd, node, d.path)
            finally:
                os.close(fd)

    def _warn(self, message: str) -> None:
        self.result.warnings.append(message)
        if self._warn_cb is not None:
            self._warn_cb(message)

    def _note(self, message: str) -> None:
        self.result.notes.append(message)
        if self._note_cb is not None:
            self._note_cb(message)


def _unlock(dir_fd: int, name: str) -> bool:
    """Clear the immutable and append-only flags of a file or folder that an earlier restore
    into this target left (this restore sets them again at the end). True if it had any."""
    if not FLAGS:
        return False
    try:
        fd = os.open(name, _FLAG_OPEN, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        mode = os.fstat(fd).st_mode
        return (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and clear_locking(fd)
    except OSError:
        return False
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    while data:
        n = os.pwrite(fd, data, pos)
        data, pos = data[n:], pos + n


def _not_a_folder(path: str) -> StrongroomError:
    return StrongroomError(f"{path} exists and is not a folder; restore into an empty target")


def _check_arrival(blob_id: bytes, asked: Container[bytes], received: Container[bytes]) -> None:
    """A blob the restore did not ask for, or one sent twice, means the repository is lying."""
    if blob_id not in asked:
        raise IntegrityError(
            f"restore failed: the repository sent blob {blob_id.hex()[:16]}, not asked for"
        )
    if blob_id in received:
        raise IntegrityError(f"restore failed: the repository sent blob {blob_id.hex()[:16]} twice")


def _check_complete(missing: int) -> None:
    if missing:
        raise IntegrityError(
            f"restore incomplete: {missing} blob(s) were not received from the repository"
        )


def _match(path: tuple[str, ...], wanted: list[tuple[str, ...]]) -> bool | None:
    """True: inside an included path; False: an ancestor of one; None: not selected."""
    if not wanted:
        return True
    ancestor = False
    for w in wanted:
        if path[: len(w)] == w:
            return True
        if w[: len(path)] == path:
            ancestor = True
    return False if ancestor else None
