"""Write-once object storage over any fsspec filesystem.

Layout under the store root (two-character fan-out, like git and dvc-objects)::

    modelkeep-store.json        store descriptor (format version), written once
    chunks/ab/cdef…             chunk objects, id = BLAKE3 of the raw chunk
    snapshots/ab/cdef…          snapshot objects, id = BLAKE3 of the canonical JSON
    fossils/ab/cdef…            chunks a garbage collection has hidden (see :mod:`gc`)
    signatures/ab/cdef…/<key>   signatures of snapshot abcdef…, one per key (docs/format.md §15)
    journal/ab/cdef…            registry journal entries, id = BLAKE3 of the canonical JSON

Objects are immutable. A write is a *conditional create*: it succeeds only if the object does not
exist yet (``O_EXCL`` semantics through ``os.link`` locally, ``If-None-Match: *`` on S3,
``overwrite=False`` on Azure). Losing that race is not an error: the object already holds the same
bytes, because the name is the hash of the content. Nothing is ever renamed into place on an object
store and nothing is ever overwritten, so a crash can leave only unreferenced objects, never a
damaged one.

Every read is checked against the id it was asked for, and bounded: an object larger than its
kind may be (:data:`MAX_OBJECT`) is refused before it is read, so a hostile store cannot make a
reader allocate without limit. A chunk read falls back to its fossil: a
garbage collection may have hidden a chunk that a version committed in the same instant still
uses, and the next collection puts it back (docs/format.md §13).

In an encrypted store (:mod:`modelkeep.store.crypto`) ids are keyed hashes and every object is
sealed; the store supplies the cipher lazily, on the first read or write, so opening a store costs
no request and a store nobody reads needs no key.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelkeep.errors import IntegrityError, NotFoundError
from modelkeep.store import codec
from modelkeep.store.codec import Kind
from modelkeep.store.hashing import content_id, is_id, new_hasher
from modelkeep.store.location import translate_errors

if TYPE_CHECKING:
    import fsspec

    from modelkeep.store.crypto import ObjectCipher
    from modelkeep.store.location import Location

DESCRIPTOR = "modelkeep-store.json"
FOSSILS = "fossils"
DELTAS = "deltas"
QUARANTINE = "quarantine"
DAMAGED = "damaged"  # empty markers: chunks a verify found damaged, until they are rewritten
_DIRS = {Kind.CHUNK: "chunks", Kind.SNAPSHOT: "snapshots", Kind.JOURNAL: "journal"}
SIGNATURES = "signatures"
# Largest stored object of each kind: chunks are at most 4 MiB (chunking.py), plus a header and
# room for per-chunk codec overhead (an AEAD nonce and tag); a snapshot lists about 75 bytes per
# chunk, so 64 MiB describes models of several TiB.
MAX_OBJECT = {Kind.CHUNK: (4 << 20) + 4096, Kind.SNAPSHOT: 64 << 20, Kind.JOURNAL: 1 << 20}
MAX_DESCRIPTOR = 1 << 20
MAX_SIGNATURE = 64 << 10
MAX_SIGNATURES = 64  # signature objects looked at per snapshot


# s3fs (412 PreconditionFailed), adlfs (409 BlobAlreadyExists) and memory all raise a plain
# FileExistsError for a lost conditional create. AWS may instead answer 409
# ConditionalRequestConflict while a competing create is in flight; s3fs raises that as
# OSError(EBUSY), and a retry then finds the object (or creates it).
_CREATE_ATTEMPTS = 5
_MMAP_MIN = 1 << 20
# Linux anonymous temp files; cleared on the first filesystem that refuses them.
_TMPFILE_OK = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


# Local objects are written in pieces of at most this size. The kernel backs one large write
# with large page-cache folios, which need contiguous memory: on a machine whose memory is
# fragmented by file churn, writing 1 GiB as 2.5 MiB writes took 0.33-2.6 s from one run to the
# next, and as 128 KiB writes a steady 0.36-0.44 s (`cp` of the same bytes: 0.27-0.29 s).
WRITE_PIECE = 128 << 10


# fallocate(2) answers these where a filesystem (NFS before 4.2, some FUSE ones) or system
# cannot allocate ahead: the file is then written as it would be without.
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV})


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    # The system call itself, not os.posix_fallocate: where a filesystem has no fallocate,
    # glibc's posix_fallocate writes a byte into every block instead, far slower than nothing.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):
        return None
    # fallocate64 takes 64-bit offsets everywhere; plain fallocate only where off_t is 64-bit
    # (musl, which dropped the *64 names, always is).
    names = ["fallocate64"] + (["fallocate"] if ctypes.sizeof(ctypes.c_long) == 8 else [])
    for name in names:
        try:
            func = libc[name]
        except AttributeError:
            continue
        func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        func.restype = ctypes.c_int
        return func
    return None  # not Linux


def preallocate(fd: int, size: int) -> bool:
    """Allocate the first *size* bytes of file *fd* on disk before they are written, which also
    sets its size; False, with nothing done, where the filesystem cannot.

    Writing into blocks allocated at once skips the per-block reservation work of delayed
    allocation (ext4, xfs): 8-10% less CPU on a pull of bf16 weights and 3% on their store
    (bench/RESULTS-codec-speed.md). A full disk is also reported before anything is written."""
    func = _fallocate()
    if func is None or size <= 0:
        return False
    while func(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err in _NO_FALLOCATE:
            return False
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))
    return True


def _writev_all(fd: int, parts: list[memoryview]) -> None:
    parts = [p for p in parts if len(p)]  # an empty object (a delta record) writes nothing
    while parts:
        n = os.writev(fd, parts)
        if n == 0:
            raise OSError(errno.EIO, "write made no progress")
        while parts and n >= len(parts[0]):
            n -= len(parts[0])
            parts.pop(0)
        if parts and n:
            parts[0] = parts[0][n:]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """All of *data* at *offset* of *fd*, in writes of at most ``WRITE_PIECE`` bytes."""
    done = 0
    while done < len(data):
        n = os.pwritev(fd, [data[done : done + WRITE_PIECE]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, "write made no progress")
        done += n


def _write_all(fd: int, header: bytes, raw: bytes | memoryview) -> None:
    """Header and payload, in writes of at most ``WRITE_PIECE`` bytes (the header rides with
    the first piece)."""
    view = memoryview(raw).cast("B")
    if len(header) + len(view) > WRITE_PIECE:  # a chunk: small files are left to the kernel
        preallocate(fd, len(header) + len(view))
    first = max(0, WRITE_PIECE - len(header))
    _writev_all(fd, [memoryview(header), view[:first]])
    for offset in range(first, len(view), WRITE_PIECE):
        _writev_all(fd, [view[offset : offset + WRITE_PIECE]])


def local_workers() -> int:
    """Threads that work on chunks at once in a local store: one per core this process may run
    on, at most 4. Their work is CPU-bound (hashing, coding, the kernel's copies) and takes the
    GIL between each step, which more threads than cores only pass back and forth (with the
    caches): on two cores, four workers used 5-9% more CPU than two to store and to pull bf16
    weights (bench/RESULTS-codec-speed.md). Reading ahead keeps them off the disk: the store
    phase reads its source on a thread of its own, a pull asks for its next chunks early
    (:meth:`ObjectDB.prefetch`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


# A pull from a local, plain store streams each chunk through one reused buffer per thread.
_piece_buffer = threading.local()


def _piece_view() -> memoryview:
    view: memoryview | None = getattr(_piece_buffer, "view", None)
    if view is None:
        view = _piece_buffer.view = memoryview(bytearray(WRITE_PIECE))
    return view


def _payload_view(size: int) -> memoryview:
    """*size* bytes of this thread's buffer for reading a coded chunk's payload."""
    buf: bytearray | None = getattr(_piece_buffer, "payload", None)
    if buf is None or len(buf) < size:
        buf = _piece_buffer.payload = bytearray(max(size, MAX_OBJECT[Kind.CHUNK]))
    return memoryview(buf)[:size]


class BaseDamagedError(IntegrityError):
    """A delta chunk is intact but its base (``base_id``, the deepest damaged one) is not."""

    def __init__(self, message: str, base_id: str) -> None:
        super().__init__(message)
        self.base_id = base_id


class ObjectDB:
    """Content-addressed, write-once objects under ``location.root``."""

    def __init__(self, location: Location, fs: fsspec.AbstractFileSystem | None = None, *,
                 codec: str = "auto") -> None:
        self.location = location
        self.codec = codec  # the store's codec policy (modelkeep.store.coding.POLICIES)
        # The filesystem is made on first use: a command that opens a store and never reads it
        # (one that only asks the registry) imports no fsspec.
        self._fs = fs
        self._fs_lock = threading.Lock()
        self.root = location.root.rstrip("/")
        self._local = location.is_local
        self._made_dirs: set[str] = set()
        self._dirs_lock = threading.Lock()
        self._cipher_loader: Callable[[], ObjectCipher | None] | None = None
        self._cipher: ObjectCipher | None = None
        self._cipher_loaded = False
        self._cipher_lock = threading.Lock()

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        fs = self._fs
        if fs is None:
            with self._fs_lock:
                if self._fs is None:
                    self._fs = self.location.filesystem()
                fs = self._fs
        return fs

    # -- encryption ------------------------------------------------------------------------

    def set_cipher_loader(self, loader: Callable[[], ObjectCipher | None]) -> None:
        """*loader* says, once, whether objects are sealed and with what (None: plain)."""
        with self._cipher_lock:
            self._cipher_loader = loader
            self._cipher_loaded = False
            self._cipher = None

    @property
    def cipher(self) -> ObjectCipher | None:
        if not self._cipher_loaded:
            with self._cipher_lock:
                if not self._cipher_loaded:
                    loader = self._cipher_loader
                    self._cipher = loader() if loader is not None else None
                    self._cipher_loaded = True
        return self._cipher

    def object_id(self, data: bytes | bytearray | memoryview) -> str:
        """The id *data* is stored under: plain BLAKE3, or keyed in an encrypted store."""
        cipher = self.cipher
        return content_id(data) if cipher is None else cipher.object_id(data)

    # -- paths -----------------------------------------------------------------------------

    def path(self, kind: Kind, oid: str) -> str:
        if not is_id(oid):
            raise IntegrityError(f"malformed object id {oid!r}")
        return f"{self.root}/{_DIRS[kind]}/{oid[:2]}/{oid[2:]}"

    def quarantine_path(self, oid: str) -> str:
        if not is_id(oid):
            raise IntegrityError(f"malformed object id {oid!r}")
        return f"{self.root}/{QUARANTINE}/{oid[:2]}/{oid[2:]}"

    def quarantine(self, oid: str) -> bool:
        """Move a damaged chunk object aside to ``quarantine/`` (kept for inspection), so its
        name is free for a verified copy; False if there was none. The only time an object's
        name is given new bytes, and only after its own bytes failed their checks."""
        src = self.path(Kind.CHUNK, oid)
        try:
            self.copy_path(src, self.quarantine_path(oid))
        except FileNotFoundError:
            return False
        return self.delete_path(src)

    def damaged_path(self, oid: str) -> str:
        if not is_id(oid):
            raise IntegrityError(f"malformed object id {oid!r}")
        return f"{self.root}/{DAMAGED}/{oid[:2]}/{oid[2:]}"

    def mark_damaged(self, oid: str) -> None:
        """Record that chunk *oid* failed its checks, so that no register reuses it: the next
        one that holds its bytes moves it aside and writes them anew."""
        self.put_raw_once(self.damaged_path(oid), b"")

    def damaged_ids(self) -> set[str]:
        """The chunks recorded as damaged (:meth:`mark_damaged`) and not rewritten since."""
        return {oid for oid, _size, _when in self.ids_with_times(f"{self.root}/{DAMAGED}")}

    def clear_damaged(self, oid: str) -> None:
        self.delete_path(self.damaged_path(oid))

    def fossil_path(self, oid: str) -> str:
        if not is_id(oid):
            raise IntegrityError(f"malformed object id {oid!r}")
        return f"{self.root}/{FOSSILS}/{oid[:2]}/{oid[2:]}"

    def descriptor_path(self) -> str:
        return f"{self.root}/{DESCRIPTOR}"

    # -- writes ----------------------------------------------------------------------------

    def put(
        self, kind: Kind, oid: str, raw: bytes | memoryview, *,
        workspace: bytearray | None = None, dtype: str | None = None,
        base: tuple[str, memoryview, int] | None = None,
    ) -> int:
        """Store *raw* under *oid* unless present. Returns the stored size of the object this
        call created (header included), or 0 if it was there already.

        A chunk is coded when the store's codec policy finds a smaller form for it; *dtype*
        says what it holds (the safetensors dtype of tensor data, else None). *workspace* is the
        buffer *raw* is the start of (``memoryview(workspace)[:n]``), given by a caller that no
        longer needs its bytes: an encrypted store may seal the object in it, in place.
        *base* is ``(id, raw bytes, delta depth)`` of the same tensor's chunk in the parent
        version: the chunk is stored as a delta of it when that is smaller."""
        cipher = self.cipher
        path = self.path(kind, oid)
        if self._local and os.path.exists(path):
            return 0  # checked before coding and sealing, which would be wasted work
        flags, codec_id, body = 0, 0, raw
        if kind is Kind.CHUNK and self.codec != "none":
            coded = self._code(raw, dtype, base)
            if coded is not None:
                flags, codec_id, body = codec.FLAG_CODED, coded[0], coded[1]
                workspace = None  # the coded bytes are not in it
                if codec_id == codec.CODEC_DELTA and base is not None:
                    # Before the chunk: a collection that keeps the chunk must see its base.
                    self.put_raw_once(self.delta_edge_path(oid, base[0]), b"")
        if cipher is not None:
            header = codec.encode_header(kind, len(raw), flags | codec.FLAG_SEALED, codec_id)
            if workspace is not None and (not isinstance(body, memoryview)
                                          or body.obj is not workspace):
                workspace = None  # not a view of it: seal into a buffer of our own
            nonce, sealed = cipher.seal(header, oid, body, workspace)
            size = codec.HEADER_SIZE + len(nonce) + len(sealed)
            if self._local:
                return size if self._put_local(path, header + nonce, sealed) else 0
            return size if self._create_remote(path, b"".join((header, nonce, sealed))) else 0
        header = codec.encode_header(kind, len(raw), flags, codec_id)
        size = codec.HEADER_SIZE + len(body)
        if self._local:
            return size if self._put_local(path, header, body) else 0
        # One copy into the request body; ``header + bytes(raw)`` would make two.
        return size if self._create_remote(path, b"".join((header, body))) else 0

    def _code(self, raw: bytes | memoryview, dtype: str | None,
              base: tuple[str, memoryview, int] | None) -> tuple[int, bytes | memoryview] | None:
        from modelkeep.store.coding import delta_width, encode, encode_delta

        delta = None
        if (base is not None and self.codec == "auto" and base[2] < codec.MAX_DELTA_DEPTH
                and len(base[1]) == len(raw)):
            # In buffers of this thread (a delta's and the planes' apart, as both are
            # compared): the caller writes the payload out before this thread codes again.
            delta = encode_delta(raw, base[1], base[0], base[2] + 1,
                                 delta_width(dtype, len(raw)), reuse=True)
            if len(delta) < len(raw) // 2:  # clearly better than any whole-chunk codec
                return codec.CODEC_DELTA, delta
        coded = encode(raw, dtype, self.codec, reuse=True)
        if delta is not None and len(delta) < len(raw) and (
                coded is None or len(delta) < len(coded[1])):
            return codec.CODEC_DELTA, delta
        return None if coded is None else (int(coded[0]), coded[1])

    def put_raw_once(self, path: str, blob: bytes) -> bool:
        """Conditional create of a non-content-addressed file (the descriptor)."""
        if self._local:
            return self._put_local(path, b"", blob)
        return self._create_remote(path, blob)

    def remove_raw(self, path: str) -> None:
        """Delete a non-content-addressed file (a key object replaced by rotation)."""
        if self._local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        with translate_errors(self.location), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def list_raw(self, directory: str) -> list[str]:
        """File names directly in *directory* under the root (empty if it does not exist)."""
        path = f"{self.root}/{directory}"
        if self._local:
            try:
                return sorted(n for n in os.listdir(path) if not n.startswith(".tmp-"))
            except FileNotFoundError:
                return []
        with translate_errors(self.location):
            self.fs.invalidate_cache(path)  # s3fs and adlfs cache listings; these change
            try:
                entries = self.fs.ls(path, detail=False)
            except FileNotFoundError:
                return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

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
        # A full or read-only disk becomes one error naming the store (StoreFullError).
        with translate_errors(self.location):
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
        # A ranged read of one byte, not fsspec's exists(): s3fs and adlfs follow a missing
        # object's HEAD with a listing (a "directory" of that name?), two requests where one
        # will do, each of which can stall, and an S3 LIST costs ten GETs. An object always
        # has a header, so the range is never empty.
        with translate_errors(self.location):
            try:
                self.fs.cat_file(path, start=0, end=1)
            except FileNotFoundError:
                return False
            return True

    def read_blob(self, path: str, what: str, limit: int | None = None) -> bytes | mmap.mmap:
        """The stored bytes at *path*, refused when longer than *limit*. Large local objects are
        mapped rather than read: hashing and writing them out then touch the page cache
        directly, saving a copy and an allocation per chunk on a pull."""
        try:
            if self._local:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    _check_size(size, limit, what)
                    if size < _MMAP_MIN:
                        return f.read()
                    return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
            with translate_errors(self.location):
                if limit is None:
                    return bytes(self.fs.cat_file(path))
                # A ranged read: one byte past the limit is enough to know it is too long.
                data = bytes(self.fs.cat_file(path, start=0, end=limit + 1))
                _check_size(len(data), limit, what)
                return data
        except FileNotFoundError:
            raise NotFoundError(f"{what} is missing from the store {self.location.url}") from None

    def get(
        self, kind: Kind, oid: str, what: str | None = None, *, transient: bool = False
    ) -> memoryview:
        """Return the raw payload of an object after checking its header and its id.

        *transient* lets an encrypted store decrypt into a buffer of the calling thread that the
        thread's next ``get`` reuses: for callers that are done with the bytes before then."""
        return self._get(kind, oid, what, transient=transient, chain=0)[0]

    def get_base(self, oid: str) -> tuple[memoryview, int]:
        """A chunk's raw bytes and its place in a delta chain (0: stored whole), for coding
        another chunk as a delta of it."""
        return self._get(Kind.CHUNK, oid, None, transient=False, chain=0)

    def _get(self, kind: Kind, oid: str, what: str | None, *, transient: bool,
             chain: int) -> tuple[memoryview, int]:
        what = what or f"{kind.name.lower()} {oid[:12]}"
        cipher = self.cipher  # first: a wrong key is the error to report, even for a lost object
        try:
            blob = self.read_blob(self.path(kind, oid), what, MAX_OBJECT[kind])
        except NotFoundError:
            if kind is not Kind.CHUNK:
                raise
            # Hidden by a garbage collection while a version that uses it was committed; the
            # next collection restores it. Same bytes, same checks.
            try:
                blob = self.read_blob(self.fossil_path(oid), what, MAX_OBJECT[kind])
            except NotFoundError:
                raise NotFoundError(
                    f"{what} is missing from the store {self.location.url}") from None
        depth = 0
        if cipher is not None:
            header, body = codec.split(blob, kind, what, sealed=True)
            # A coded payload is decoded into a buffer of its own, and decoding a delta reads
            # its base, which would reuse this thread's buffer: only plain objects use it.
            plain = cipher.open(memoryview(blob)[: codec.HEADER_SIZE], oid, body, what,
                                transient=transient and not header.coded)
            if header.coded:
                plain, depth = self._decode_chunk(header, plain, what, chain)
            # Authentication already binds the id; the hash also catches a writer's bug.
            if cipher.object_id(plain) != oid:
                raise IntegrityError(f"{what} is corrupt: its content does not match its id {oid}")
            return plain, depth
        header, payload = codec.split(blob, kind, what)
        if header.coded:
            payload, depth = self._decode_chunk(header, payload, what, chain)
        if content_id(payload) != oid:
            raise IntegrityError(f"{what} is corrupt: its content does not match its id {oid}")
        return payload, depth

    def _decode_chunk(self, header: codec.Header, payload: bytes | memoryview, what: str,
                      chain: int) -> tuple[memoryview, int]:
        """The raw bytes of a coded chunk and its delta depth; a delta's base is read (and
        checked) first, following at most :data:`codec.MAX_DELTA_DEPTH` links in all."""
        from modelkeep.store.coding import decode

        base, depth = self._base_of(header, payload, what, chain)
        return decode(header.codec, payload, header.raw_length, what, base), depth

    def _base_of(self, header: codec.Header, payload: bytes | memoryview, what: str,
                 chain: int) -> tuple[memoryview | None, int]:
        """The raw bytes of the base of a coded chunk (None unless it is a delta) and the
        chunk's depth in its chain."""
        from modelkeep.store.coding import delta_base

        if header.codec != codec.CODEC_DELTA:
            return None, 0
        base_id, depth = delta_base(payload, what)
        if chain + depth > codec.MAX_DELTA_DEPTH:
            raise IntegrityError(f"{what} is corrupt: its delta chain is longer than "
                                 f"{codec.MAX_DELTA_DEPTH}")
        try:
            base, base_depth = self._get(Kind.CHUNK, base_id, f"base {base_id[:12]} of {what}",
                                         transient=False, chain=chain + 1)
        except (IntegrityError, NotFoundError) as exc:
            # Not this chunk's own damage: a repair must mend the base, not this object.
            root = exc.base_id if isinstance(exc, BaseDamagedError) else base_id
            raise BaseDamagedError(f"{what} is read through its base {base_id[:12]}, which is "
                                   f"damaged: {exc.message}", root) from None
        if base_depth != depth - 1:
            raise IntegrityError(f"{what} is corrupt: it says it is delta {depth} of a chain, "
                                 f"its base is delta {base_depth}")
        return base, depth

    def delta_edges(self) -> Iterator[tuple[str, str, datetime]]:
        """``(chunk id, base id, written)`` of every chunk stored as a delta: the records under
        ``deltas/`` that garbage collection follows to keep the bases of the chunks it keeps."""
        for path, _size, when in self.listing(f"{self.root}/{DELTAS}"):
            parts = path.rstrip("/").split("/")
            if len(parts) < 2 or len(parts[-2]) != 2:
                continue
            cid, sep, base = (parts[-2] + parts[-1]).partition("-")
            if sep and is_id(cid) and is_id(base):
                yield cid, base, when

    def delta_edge_path(self, oid: str, base: str) -> str:
        if not (is_id(oid) and is_id(base)):
            raise IntegrityError(f"malformed object id {oid!r} or {base!r}")
        return f"{self.root}/{DELTAS}/{oid[:2]}/{oid[2:]}-{base}"

    def copy_chunk_into(self, oid: str, size: int, fd: int, offset: int, what: str) -> bool:
        """Write chunk *oid*'s *size* bytes at *offset* of file *fd*, checked against the id on
        the way; False (nothing written) when the store cannot do this: not local, or encrypted.

        Each piece is read into this thread's buffer (a coded chunk: decoded into it), hashed
        there and written from there, so what is checked is exactly what lands in the file,
        and each byte crosses memory once each way while it is still in the processor's cache
        (no allocation per chunk, no mapping, no second pass over the written file). A
        mismatch raises :class:`IntegrityError` after the last piece; the caller discards the
        file.
        """
        if not self._local or self.cipher is not None:
            return False
        from modelkeep.store.coding import decode_pieces

        try:
            src = os.open(self.path(Kind.CHUNK, oid), os.O_RDONLY)
        except FileNotFoundError:
            try:  # see get(): a chunk hidden by a running garbage collection
                src = os.open(self.fossil_path(oid), os.O_RDONLY)
            except FileNotFoundError:
                raise NotFoundError(
                    f"{what} is missing from the store {self.location.url}") from None
        try:
            stored = os.fstat(src).st_size
            _check_size(stored, MAX_OBJECT[Kind.CHUNK], what)
            header = codec.check_header(os.pread(src, codec.HEADER_SIZE, 0),
                                        stored - codec.HEADER_SIZE, Kind.CHUNK, what)
            if header.raw_length != size:
                raise IntegrityError(
                    f"{what} has {header.raw_length} bytes, its snapshot says {size}")
            hasher = new_hasher()
            if header.coded:
                # Read into a buffer of this thread, then decoded a piece at a time: each
                # piece is hashed and written while it is still in the processor's cache.
                payload = _payload_view(stored - codec.HEADER_SIZE)
                if os.preadv(src, [payload], codec.HEADER_SIZE) != len(payload):
                    raise IntegrityError(f"{what} is truncated")
                base, _depth = self._base_of(header, payload, what, 0)
                done = 0
                for piece in decode_pieces(header.codec, payload, size, what, base):
                    hasher.update(piece)
                    pwrite_all(fd, piece, offset + done)
                    done += len(piece)
            else:
                view = _piece_view()
                done = 0
                while done < size:
                    n = os.preadv(src, [view[: min(len(view), size - done)]],
                                  codec.HEADER_SIZE + done)
                    if n == 0:
                        raise IntegrityError(f"{what} is truncated")
                    hasher.update(view[:n])
                    pwrite_all(fd, view[:n], offset + done)
                    done += n
        finally:
            os.close(src)
        if hasher.hexdigest() != oid:
            raise IntegrityError(f"{what} is corrupt: its content does not match its id {oid}")
        return True

    def prefetch(self, kind: Kind, oid: str) -> None:
        """Have the kernel start reading object *oid* of a local store into the page cache, so
        the thread that reads it later does not wait on the disk. A hint: nothing happens for
        an object store, a missing object or a system without ``posix_fadvise``."""
        if not self._local or not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(self.path(kind, oid), os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

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
            finally:
                self.fs.invalidate_cache()  # see listing()
            for entry in sorted(entries):
                parts = entry.rstrip("/").split("/")
                if len(parts) >= 2 and is_id(parts[-2] + parts[-1]) and len(parts[-2]) == 2:
                    yield parts[-2] + parts[-1]

    def ids_with_prefix(self, kind: Kind, prefix: str) -> list[str]:
        """The ids of *kind* starting with *prefix* (at least 2 hex digits): one listing of a
        single fan-out directory, never of the whole kind."""
        if len(prefix) < 2 or any(c not in "0123456789abcdef" for c in prefix):
            raise IntegrityError(f"malformed id prefix {prefix!r}")
        out = []
        for path, _size, _when in self.listing(f"{self.root}/{_DIRS[kind]}/{prefix[:2]}"):
            parts = path.rstrip("/").split("/")
            if len(parts) >= 2 and len(parts[-2]) == 2:
                oid = parts[-2] + parts[-1]
                if is_id(oid) and oid.startswith(prefix):
                    out.append(oid)
        return sorted(out)

    # -- signatures ------------------------------------------------------------------------

    def signature_dir(self, snapshot_id: str) -> str:
        if not is_id(snapshot_id):
            raise IntegrityError(f"malformed object id {snapshot_id!r}")
        return f"{self.root}/{SIGNATURES}/{snapshot_id[:2]}/{snapshot_id[2:]}"

    def put_signature(self, snapshot_id: str, key_id: str, blob: bytes) -> bool:
        """Conditional create of a snapshot's signature by one key (same key, same bytes)."""
        if not is_id(key_id):
            raise IntegrityError(f"malformed key id {key_id!r}")
        path = f"{self.signature_dir(snapshot_id)}/{key_id}"
        if self._local:
            return self._put_local(path, b"", blob)
        return self._create_remote(path, blob)

    def signature_keys(self, snapshot_id: str) -> list[str]:
        """The key ids that signed *snapshot_id* (names only: nothing is verified here)."""
        base = self.signature_dir(snapshot_id)
        with translate_errors(self.location):
            if self._local:
                try:
                    names = os.listdir(base)
                except (FileNotFoundError, NotADirectoryError):
                    return []
            else:
                try:
                    # Listings are cached by fsspec; a signature written by another client must
                    # be seen.
                    self.fs.invalidate_cache(base)
                    names = [e.rstrip("/").rsplit("/", 1)[-1]
                             for e in self.fs.ls(base, detail=False)]
                except FileNotFoundError:
                    return []
        return sorted(n for n in names if is_id(n))[:MAX_SIGNATURES]

    def read_signature(self, snapshot_id: str, key_id: str) -> bytes | mmap.mmap:
        path = f"{self.signature_dir(snapshot_id)}/{key_id}"
        return self.read_blob(path, f"signature {key_id[:16]} of snapshot {snapshot_id[:12]}",
                              MAX_SIGNATURE)

    def size(self, kind: Kind, oid: str) -> int:
        """Stored size of an object, header included."""
        path = self.path(kind, oid)
        if self._local:
            return os.path.getsize(path)
        with translate_errors(self.location):
            return int(self.fs.size(path))

    # -- garbage collection ---------------------------------------------------------------
    # Used by :mod:`modelkeep.store.gc` only. These are the only operations that remove or
    # move objects; everything else in the store is write-once.

    def listing(self, base: str) -> Iterator[tuple[str, int, datetime]]:
        """``(path, size, modified)`` of every file under *base* (recursively), with the
        modification time the storage service recorded (never this machine's clock)."""
        with translate_errors(self.location):
            if self._local:
                for dirpath, _dirs, files in os.walk(base):
                    for name in files:
                        full = os.path.join(dirpath, name)
                        try:
                            st = os.stat(full)
                        except FileNotFoundError:
                            continue
                        yield full, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)
                return
            try:
                found = self.fs.find(base, detail=True)
            except FileNotFoundError:
                return
            finally:
                # A listing fills fsspec's directory cache, which later existence checks would
                # answer from: other machines' writes and deletes must stay visible.
                self.fs.invalidate_cache()
            for path, info in sorted(found.items()):
                if info.get("type") == "directory":
                    continue
                yield path, int(info.get("size") or 0), modified(info)

    def ids_with_times(self, base: str) -> Iterator[tuple[str, int, datetime]]:
        """``(id, stored size, modified)`` of the objects in a fan-out tree (chunks/, fossils/)."""
        for path, size, when in self.listing(base):
            parts = path.rstrip("/").split("/")
            if len(parts) >= 2 and len(parts[-2]) == 2 and is_id(parts[-2] + parts[-1]):
                yield parts[-2] + parts[-1], size, when

    def delete_path(self, path: str) -> bool:
        """Remove one file; False if it was not there."""
        try:
            if self._local:
                os.unlink(path)
                return True
            with translate_errors(self.location):
                self.fs.rm_file(path)
            return True
        except FileNotFoundError:
            return False

    def copy_path(self, src: str, dst: str) -> None:
        """Copy one object inside the store (server-side on object stores)."""
        if self._local:
            self._ensure_dir(os.path.dirname(dst))
            tmp = f"{dst}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                os.link(src, tmp)  # same inode: no bytes copied, and the source may go now
                os.replace(tmp, dst)
                os.utime(dst)  # the hiding time, read by the next collection
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return
        with translate_errors(self.location):
            self.fs.cp_file(src, dst)

    def now(self) -> datetime:
        """The storage service's clock, read from a file written for the purpose; collection
        decisions compare object times with this, so a skewed client clock cannot matter."""
        path = f"{self.root}/gc/clock/{os.getpid()}-{threading.get_ident()}-{time.time_ns()}"
        if self._local:
            self._ensure_dir(os.path.dirname(path))
            with open(path, "wb"):
                pass
            try:
                return datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
            finally:
                os.unlink(path)
        with translate_errors(self.location):
            self.fs.pipe_file(path, b"")
            try:
                return modified(self.fs.info(path))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)


def modified(info: dict[str, Any]) -> datetime:
    """The modification time in an fsspec ``info`` record (s3fs ``LastModified``, adlfs
    ``last_modified``, local ``mtime``), as an aware UTC datetime."""
    for key in ("LastModified", "last_modified", "mtime", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
    raise ValueError(f"no modification time in {sorted(info)}")

def _check_size(size: int, limit: int | None, what: str) -> None:
    if limit is not None and size > limit:
        raise IntegrityError(f"{what} is larger than {limit} bytes, the most such an object may "
                             f"be; it was not read")
