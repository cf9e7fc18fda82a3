"""Restore: recreate a snapshot under a target folder, verifying every blob.

Safety rules (docs/SECURITY.md): every name is checked to be a single plain component; folders
are created by us and checked with lstat; files are opened with O_NOFOLLOW; symlinks are made
last, so nothing is ever written through a link; hard links only point at files this restore
made. A malicious tree can therefore not make restore write outside the target.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Container
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import tree
from .errors import IntegrityError, StrongroomError
from .pathsafe import is_safe_name, split_include
from .repository import Repository
from .snapshot import Snapshot
from .tree import Node

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_MAX_DEPTH = 4096
_IN_FLIGHT = 16  # blobs decoded/written concurrently; bounds memory


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    bytes_written: int = 0
    duration: float = 0.0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # informational: not a failed restore


@dataclass
class _FileJob:
    path: str
    node: Node
    remaining: int  # content refs still to write
    lock: threading.Lock = field(default_factory=threading.Lock)


class Restorer:
    def __init__(
        self,
        repo: Repository,
        warn: Callable[[str], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        workers: int | None = None,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = repo
        self._warn_cb = warn
        self._note_cb = note
        self.progress = progress or (lambda _f, _b: None)
        self.workers = max(1, workers or os.cpu_count() or 2)
        self.result = RestoreResult()
        self._root_uid = hasattr(os, "geteuid") and os.geteuid() == 0

    def restore(
        self, snap: Snapshot, target: str, includes: list[str] | None = None
    ) -> RestoreResult:
        started = time.monotonic()
        base = self._prepare_target(target)
        wanted = [split_include(i) for i in includes or []]
        files: list[_FileJob] = []
        dirs: list[tuple[str, Node]] = []
        specials: list[tuple[str, Node]] = []
        self._walk(bytes.fromhex(snap.tree), base, (), wanted, files, dirs, specials)
        self._write_contents(files)
        self._make_specials(specials)
        for path, node in sorted(dirs, key=lambda d: d[0].count(os.sep), reverse=True):
            self._set_dir_meta(path, node)
        if wanted and not self.result.files and not self.result.dirs:
            raise StrongroomError("nothing in the snapshot matches the --include paths")
        self.result.duration = time.monotonic() - started
        return self.result

    # ---- planning ----------------------------------------------------------------------------

    def _prepare_target(self, target: str) -> str:
        base = os.path.abspath(target)
        try:
            os.makedirs(base, exist_ok=True)
        except OSError as exc:
            raise StrongroomError(f"cannot create target folder {target}: {exc.strerror}") from None
        # The target itself is the user's choice and may be a link to a folder (another disk):
        # resolve it once. Everything below it is created by us and never followed.
        base = os.path.realpath(base)
        st = os.lstat(base)
        if not stat.S_ISDIR(st.st_mode):
            raise StrongroomError(f"target {target} is not a folder")
        return base

    def _walk(
        self,
        root_tree: bytes,
        base: str,
        prefix: tuple[str, ...],
        wanted: list[tuple[str, ...]],
        files: list[_FileJob],
        dirs: list[tuple[str, Node]],
        specials: list[tuple[str, Node]],
    ) -> None:
        # Breadth-first, one level at a time, so each level's trees are fetched in one request
        # (one index query, packs read in order) instead of one round trip per folder.
        level: list[tuple[bytes, str, tuple[str, ...]]] = [(root_tree, base, prefix)]
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
        folder: str,
        rel: tuple[str, ...],
        wanted: list[tuple[str, ...]],
        files: list[_FileJob],
        dirs: list[tuple[str, Node]],
        specials: list[tuple[str, Node]],
        next_level: list[tuple[bytes, str, tuple[str, ...]]],
    ) -> None:
        seen: set[bytes] = set()  # names as the filesystem sees them: 'é' == '\udcc3\udca9'
        for node in nodes:
            if not is_safe_name(node.name) or tree.name_key(node.name) in seen:
                self._warn(f"snapshot contains an unsafe or duplicate name {node.name!r}; skipped")
                continue
            seen.add(tree.name_key(node.name))
            sub = (*rel, node.name)
            match = _match(sub, wanted)
            if match is None:
                continue
            path = os.path.join(folder, node.name)
            if node.type == tree.DIR:
                self._mkdir(path)
                if match:  # inside an included path: restore the folder itself
                    dirs.append((path, node))
                    self.result.dirs += 1
                assert node.subtree is not None
                next_level.append((node.subtree, path, sub))
            elif not match:
                continue  # an ancestor-only match cannot select a file
            elif node.type == tree.FILE:
                files.append(_FileJob(path, node, len(node.content)))
            else:
                specials.append((path, node))

    def _mkdir(self, path: str) -> None:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise StrongroomError(
                    f"{path} exists and is not a folder; restore into an empty target"
                ) from None
        except OSError as exc:
            raise StrongroomError(f"cannot create {path}: {exc.strerror}") from None

    # ---- contents ----------------------------------------------------------------------------

    def _write_contents(self, files: list[_FileJob]) -> None:
        plan: dict[bytes, list[tuple[_FileJob, int, int, int]]] = defaultdict(list)
        links: list[tuple[str, str]] = []
        first_by_link: dict[str, _FileJob] = {}
        for job in files:
            node = job.node
            if node.hardlink is not None:
                first = first_by_link.get(node.hardlink)
                if first is not None:
                    links.append((first.path, job.path))
                    continue
                first_by_link[node.hardlink] = job
            if len(node.content) != 1:  # one-piece files are created when their piece arrives
                self._create_file(job)
            pos = 0
            for ref in node.content:
                plan[ref.blob_id].append((job, pos, ref.offset, ref.length))
                pos += ref.length
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
                    self._write_piece(job, pos, memoryview(plain)[off : off + length])
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
                self._warn(f"{dst}: cannot create hard link ({exc.strerror})")

    @staticmethod
    def _link(src: str, dst: str) -> None:
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            # Restoring again into the same target: keep a correct link, replace a file or
            # link left by an interrupted run (never a folder, never following anything).
            st, src_st = os.lstat(dst), os.lstat(src)
            if (st.st_dev, st.st_ino) == (src_st.st_dev, src_st.st_ino):
                return
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise
            os.unlink(dst)
            os.link(src, dst, follow_symlinks=False)

    def _create_file(self, job: _FileJob) -> None:
        try:
            fd = os.open(
                job.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_BINARY | _O_NOFOLLOW, 0o600
            )
        except OSError as exc:
            raise StrongroomError(f"cannot create {job.path}: {exc.strerror}") from None
        os.close(fd)

    def _write_piece(self, job: _FileJob, pos: int, data: memoryview) -> None:
        flags = os.O_WRONLY | _O_BINARY | _O_NOFOLLOW
        if len(job.node.content) == 1:
            flags |= os.O_CREAT | os.O_TRUNC
        fd = os.open(job.path, flags, 0o600)
        try:
            if hasattr(os, "pwrite"):
                while data:
                    n = os.pwrite(fd, data, pos)
                    data, pos = data[n:], pos + n
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
            fd = os.open(job.path, os.O_RDONLY | _O_BINARY | _O_NOFOLLOW)
        assert fd is not None
        try:
            if self._root_uid:
                os.fchown(fd, node.uid, node.gid)
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

    def _make_specials(self, specials: list[tuple[str, Node]]) -> None:
        for path, node in specials:
            try:
                if node.type == tree.SOCKET:
                    # A socket belongs to the process that listened on it; like tar and restic,
                    # do not recreate it. Not a failure: nothing restorable was lost.
                    self._note(
                        f"{path}: socket not restored (sockets are recreated by their program)"
                    )
                    continue
                if not self._make_special(path, node):
                    self._warn(f"{path}: {node.type} not restored (not supported here)")
                    continue
            except FileExistsError:
                # A restore into a target that already holds this entry (an interrupted
                # restore run again): replace a link or FIFO, never anything else.
                if not self._replace_special(path, node):
                    self._warn(f"{path}: exists and is not a link or FIFO; not replaced")
                    continue
            except OSError as exc:
                self._warn(f"{path}: cannot create {node.type} ({exc.strerror})")
                continue
            self._set_link_meta(path, node)
            self.result.files += 1

    def _make_special(self, path: str, node: Node) -> bool:
        if node.type == tree.SYMLINK:
            assert node.target is not None
            os.symlink(node.target, path)
        elif node.type == tree.FIFO and hasattr(os, "mkfifo"):
            os.mkfifo(path, node.mode)
        elif node.type in (tree.CHARDEV, tree.BLOCKDEV) and self._root_uid:
            kind = stat.S_IFCHR if node.type == tree.CHARDEV else stat.S_IFBLK
            os.mknod(path, node.mode | kind, node.device)
        else:
            return False
        return True

    def _replace_special(self, path: str, node: Node) -> bool:
        try:
            st = os.lstat(path)
            if not (stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                return False
            os.unlink(path)  # removes the link itself, never what it points to
            return self._make_special(path, node)
        except OSError:
            return False

    def _set_link_meta(self, path: str, node: Node) -> None:
        try:
            if self._root_uid:
                os.lchown(path, node.uid, node.gid)
            if node.type != tree.SYMLINK:
                os.chmod(path, node.mode, follow_symlinks=False)
            if os.utime in os.supports_follow_symlinks:
                os.utime(path, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
        except (OSError, NotImplementedError) as exc:
            self._warn(f"{path}: cannot restore metadata ({getattr(exc, 'strerror', exc)})")

    def _set_dir_meta(self, path: str, node: Node) -> None:
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                return
            if self._root_uid:
                os.lchown(path, node.uid, node.gid)
            os.chmod(path, node.mode)
            os.utime(path, ns=(node.mtime_ns, node.mtime_ns))
        except OSError as exc:
            self._warn(f"{path}: cannot restore metadata ({exc.strerror})")

    def _warn(self, message: str) -> None:
        self.result.warnings.append(message)
        if self._warn_cb is not None:
            self._warn_cb(message)

    def _note(self, message: str) -> None:
        self.result.notes.append(message)
        if self._note_cb is not None:
            self._note_cb(message)


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
