"""Write-once object storage over any fsspec filesystem.

Layout under the store root (two-character fan-out, like git and dvc-objects)::

    modelkeep-store.json        store descriptor (format version), written once
    chunks/ab/cdef…             chunk objects, id = BLAKE3 of the raw chunk
    snapshots/ab/cdef…          snapshot objects, id = BLAKE3 of the canonical JSON
    journal/ab/cdef…            registry journal entries, id = BLAKE3 of the canonical JSON

Objects are immutable. A write is a *conditional create*: it succeeds only if the object does not
exist yet (``O_EXCL`` semantics through ``os.link`` locally, ``If-None-Match: *`` on S3,
``overwrite=False`` on Azure). Losing that race is not an error: the object already holds the same
bytes, because the name is the hash of the content. Nothing is ever renamed into place on an object
store and nothing is ever overwritten, so a crash can leave only unreferenced objects, never a
damaged one.

Every read is checked against the id it was asked for.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import tempfile
import threading
import time
from collections.abc import Iterator

import fsspec

from modelkeep.errors import IntegrityError, NotFoundError
from modelkeep.store import codec
from modelkeep.store.codec import Kind
from modelkeep.store.hashing import content_id, is_id
from modelkeep.store.location import Location, translate_errors

DESCRIPTOR = "modelkeep-store.json"
_DIRS = {Kind.CHUNK: "chunks", Kind.SNAPSHOT: "snapshots", Kind.JOURNAL: "journal"}


# s3fs (412 PreconditionFailed), adlfs (409 BlobAlreadyExists) and memory all raise a plain
# FileExistsError for a lost conditional create. AWS may instead answer 409
# ConditionalRequestConflict while a competing create is in flight; s3fs raises that as
# OSError(EBUSY), and a retry then finds the object (or creates it).
_CREATE_ATTEMPTS = 5
_MMAP_MIN = 1 << 20
# Linux anonymous temp files; cleared on the first filesystem that refuses them.
_TMPFILE_OK = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


def _write_all(fd: int, header: bytes, raw: bytes | memoryview) -> None:
    """One ``writev`` for header and payload (looping only on a short write)."""
    parts = [memoryview(header), memoryview(raw)]
    while parts:
        n = os.writev(fd, parts)
        if n == 0:
            raise OSError(errno.EIO, "write made no progress")
        while parts and n >= len(parts[0]):
            n -= len(parts[0])
            parts.pop(0)
        if parts and n:
            parts[0] = parts[0][n:]


class ObjectDB:
    """Content-addressed, write-once objects under ``location.root``."""

    def __init__(self, location: Location, fs: fsspec.AbstractFileSystem | None = None) -> None:
        self.location = location
        self.fs = fs if fs is not None else location.filesystem()
        self.root = location.root.rstrip("/")
        self._local = location.is_local
        self._made_dirs: set[str] = set()
        self._dirs_lock = threading.Lock()

    # -- paths -----------------------------------------------------------------------------

    def path(self, kind: Kind, oid: str) -> str:
        if not is_id(oid):
            raise IntegrityError(f"malformed object id {oid!r}")
        return f"{self.root}/{_DIRS[kind]}/{oid[:2]}/{oid[2:]}"

    def descriptor_path(self) -> str:
        return f"{self.root}/{DESCRIPTOR}"

    # -- writes ----------------------------------------------------------------------------

    def put(self, kind: Kind, oid: str, raw: bytes | memoryview) -> bool:
        """Store *raw* under *oid* unless present. Returns True if this call created it."""
        header = codec.encode_header(kind, len(raw))
        path = self.path(kind, oid)
        if self._local:
            return self._put_local(path, header, raw)
        # One copy into the request body; ``header + bytes(raw)`` would make two.
        return self._create_remote(path, b"".join((header, raw)))

    def put_raw_once(self, path: str, blob: bytes) -> bool:
        """Conditional create of a non-content-addressed file (the descriptor)."""
        if self._local:
            return self._put_local(path, b"", blob)
        return self._create_remote(path, blob)

    def _create_remote(self, path: str, blob: bytes) -> bool:
        with translate_errors(self.location):
            for attempt in range(_CREATE_ATTEMPTS):
                try:
                    self.fs.pipe_file(path, blob, mode="create")
                    return True
                except FileExistsError:
                    return False
                except OSError as exc:
                    if exc.errno != errno.EBUSY or attempt == _CREATE_ATTEMPTS - 1:
                        raise
                    time.sleep(0.1 * 2**attempt)
        return False

    def _put_local(self, path: str, header: bytes, raw: bytes | memoryview) -> bool:
        if os.path.exists(path):
            return False
        directory = os.path.dirname(path)
        self._ensure_dir(directory)
        if _TMPFILE_OK:
            created = self._put_tmpfile(directory, path, header, raw)
            if created is not None:
                return created
        return self._put_tempname(directory, path, header, raw)

    def _put_tmpfile(
        self, directory: str, path: str, header: bytes, raw: bytes | memoryview
    ) -> bool | None:
        """Write an anonymous file (``O_TMPFILE``) and link it to its name: no temp name to
        create, clean up or leave behind after a crash, and ``linkat`` fails if the name exists,
        which makes the create conditional. None if the filesystem has no ``O_TMPFILE``."""
        global _TMPFILE_OK
        try:
            fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o444)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
            _TMPFILE_OK = False
            return None
        try:
            _write_all(fd, header, raw)
            try:
                # The path is absolute, so the dir fd is ignored; passing one makes CPython call
                # linkat(AT_SYMLINK_FOLLOW), which links the open file rather than the symlink.
                os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP):
                    raise
                _TMPFILE_OK = False  # no /proc, or a filesystem that cannot link these
                return None
            return True
        finally:
            os.close(fd)

    def _put_tempname(
        self, directory: str, path: str, header: bytes, raw: bytes | memoryview
    ) -> bool:
        # Write a private temp file, then hard-link it to the final name: link() fails if the name
        # exists, which is O_EXCL for a complete file, so no reader ever sees a half-written object.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            try:
                _write_all(fd, header, raw)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # No hard links here: an atomic rename is next best. Replacing an object that
                # appeared meanwhile is harmless, since the same name means the same bytes.
                os.replace(tmp, path)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _ensure_dir(self, directory: str) -> None:
        if directory in self._made_dirs:
            return
        os.makedirs(directory, exist_ok=True)
        with self._dirs_lock:
            self._made_dirs.add(directory)

    # -- reads -----------------------------------------------------------------------------

    def exists(self, kind: Kind, oid: str) -> bool:
        path = self.path(kind, oid)
        if self._local:
            return os.path.exists(path)
        with translate_errors(self.location):
            return bool(self.fs.exists(path))

    def read_blob(self, path: str, what: str) -> bytes | mmap.mmap:
        """The stored bytes at *path*. Large local objects are mapped rather than read: hashing
        and writing them out then touch the page cache directly, saving a copy and an
        allocation per chunk on a pull."""
        try:
            if self._local:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size < _MMAP_MIN:
                        return f.read()
                    return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
            with translate_errors(self.location):
                return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            raise NotFoundError(f"{what} is missing from the store {self.location.url}") from None

    def get(self, kind: Kind, oid: str, what: str | None = None) -> memoryview:
        """Return the raw payload of an object after checking its header and its id."""
        what = what or f"{kind.name.lower()} {oid[:12]}"
        payload = codec.decode(self.read_blob(self.path(kind, oid), what), kind, what)
        if content_id(payload) != oid:
            raise IntegrityError(f"{what} is corrupt: its content does not match its id {oid}")
        return payload

    def iter_ids(self, kind: Kind) -> Iterator[str]:
        """Every id of *kind* in the store (one listing per fan-out directory)."""
        base = f"{self.root}/{_DIRS[kind]}"
        with translate_errors(self.location):
            if self._local:
                if not os.path.isdir(base):
                    return
                for fan in sorted(os.listdir(base)):
                    sub = os.path.join(base, fan)
                    if len(fan) != 2 or not os.path.isdir(sub):
                        continue
                    for name in sorted(os.listdir(sub)):
                        if is_id(fan + name):
                            yield fan + name
                return
            try:
                entries = self.fs.find(base)
            except FileNotFoundError:
                return
            for entry in sorted(entries):
                parts = entry.rstrip("/").split("/")
                if len(parts) >= 2 and is_id(parts[-2] + parts[-1]) and len(parts[-2]) == 2:
                    yield parts[-2] + parts[-1]

    def size(self, kind: Kind, oid: str) -> int:
        """Stored size of an object, header included."""
        path = self.path(kind, oid)
        if self._local:
            return os.path.getsize(path)
        with translate_errors(self.location):
            return int(self.fs.size(path))
