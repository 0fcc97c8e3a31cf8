"""Facts about the fsspec backends that the store relies on, checked against real servers.

* ``pipe_file(path, data, mode="create")`` is an atomic conditional create on memory,
  local (``auto_mkdir=True``), s3fs (moto) and adlfs (Azurite): it succeeds once; a second
  create of the same path raises the builtin ``FileExistsError`` on every backend (what it
  wraps is pinned below) and leaves the first content in place.  Of N racing creators
  exactly one wins, except on local, where pipe_file's create is check-then-write and
  ``open(path, "xb")`` must be used instead.
* ``cat_file(path, start=..., end=...)`` is a ranged read; ``start``/``end`` must be passed
  by keyword (s3fs's second positional parameter is ``version_id``).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import pytest


@dataclass
class Backend:
    name: str
    fs: object
    root: str  # bucket, container, memory prefix or local directory; no trailing slash

    def path(self, name: str) -> str:
        return f"{self.root}/{uuid.uuid4().hex}/{name}"


@pytest.fixture(params=["memory", "local", "s3", "azure"])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        from fsspec.implementations.local import LocalFileSystem

        # auto_mkdir: without it, writing below a missing directory raises (see below).
        return Backend("local", LocalFileSystem(auto_mkdir=True), tmp_path.as_posix())
    if request.param == "memory":
        from fsspec.implementations.memory import MemoryFileSystem

        return Backend("memory", MemoryFileSystem(), f"/probe-{uuid.uuid4().hex}")
    if request.param == "s3":
        import s3fs

        srv = request.getfixturevalue("moto_s3")
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **srv.storage_options)
        return Backend("s3", fs, srv.make_bucket())
    import adlfs

    srv = request.getfixturevalue("azurite")
    fs = adlfs.AzureBlobFileSystem(skip_instance_cache=True, **srv.storage_options)
    return Backend("azure", fs, srv.make_container())


def _check_duplicate_create_error(name: str, exc: BaseException) -> None:
    """Every backend raises exactly the builtin FileExistsError; pin what it wraps, too."""
    assert type(exc) is FileExistsError, repr(exc)
    if name == "s3":
        # s3fs translates the 412 PreconditionFailed (Condition: If-None-Match) response.
        from botocore.exceptions import ClientError

        cause = exc.__cause__
        assert isinstance(cause, ClientError), repr(cause)
        assert cause.response["Error"]["Code"] == "PreconditionFailed"
        assert cause.response["Error"].get("Condition") == "If-None-Match"
    elif name == "azure":
        # adlfs re-raises inside `except ResourceExistsError:` (implicit chaining).
        from azure.core.exceptions import ResourceExistsError

        inner = exc.__cause__ or exc.__context__
        assert isinstance(inner, ResourceExistsError), repr(inner)
        assert inner.status_code == 409
        assert inner.error_code == "BlobAlreadyExists"


def test_create_then_duplicate_create_raises(backend: Backend) -> None:
    fs, path = backend.fs, backend.path("obj")
    fs.pipe_file(path, b"first", mode="create")
    assert fs.cat_file(path) == b"first"

    with pytest.raises(FileExistsError) as info:
        fs.pipe_file(path, b"second", mode="create")
    _check_duplicate_create_error(backend.name, info.value)

    fs.invalidate_cache()
    assert fs.cat_file(path) == b"first"


def test_local_needs_auto_mkdir(tmp_path) -> None:
    """Unlike object stores, the default LocalFileSystem does not create parent directories."""
    from fsspec.implementations.local import LocalFileSystem

    with pytest.raises(FileNotFoundError):
        LocalFileSystem().pipe_file(f"{tmp_path.as_posix()}/a/b", b"x", mode="create")


@pytest.mark.parametrize("backend", ["s3", "azure"], indirect=True)
def test_large_conditional_create(backend: Backend) -> None:
    """Uploads past the single-request size (S3 multipart, Azure staged blocks) keep the
    create-only semantics."""
    fs, path = backend.fs, backend.path("big")
    if backend.name == "s3":
        size, kw = 11 * 2**20, {"chunksize": 5 * 2**20}  # s3fs goes multipart at 2*chunksize
    else:
        size, kw = 65 * 2**20, {}  # azure-storage-blob stages blocks above 64 MiB
    fs.pipe_file(path, b"\x01" * size, mode="create", **kw)
    with pytest.raises(FileExistsError) as info:
        fs.pipe_file(path, b"\x02" * size, mode="create", **kw)
    _check_duplicate_create_error(backend.name, info.value)
    assert fs.size(path) == size
    assert fs.cat_file(path, start=size - 4, end=size) == b"\x01" * 4


def test_overwrite_mode_still_replaces(backend: Backend) -> None:
    fs, path = backend.fs, backend.path("obj")
    fs.pipe_file(path, b"first", mode="create")
    fs.pipe_file(path, b"second", mode="overwrite")
    assert fs.cat_file(path) == b"second"


def _create(backend: Backend, path: str, data: bytes) -> None:
    """The race-safe create for each backend (see test_local_pipe_file_create_is_racy)."""
    if backend.name == "local":
        with backend.fs.open(path, "xb") as f:  # O_EXCL
            f.write(data)
    else:
        backend.fs.pipe_file(path, data, mode="create")


def test_racing_creates_have_one_winner(backend: Backend) -> None:
    fs, path = backend.fs, backend.path("race")
    n = 8
    barrier = threading.Barrier(n)
    wins: list[bytes] = []
    losses: list[BaseException] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        data = f"writer-{i}".encode()
        barrier.wait()
        try:
            _create(backend, path, data)
        except BaseException as exc:
            with lock:
                losses.append(exc)
        else:
            with lock:
                wins.append(data)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(wins) == 1, (wins, losses)
    assert len(losses) == n - 1
    for e in losses:
        _check_duplicate_create_error(backend.name, e)
    assert fs.cat_file(path) == wins[0]


def test_local_pipe_file_create_is_racy() -> None:
    """LocalFileSystem inherits the generic ``pipe_file``: ``mode="create"`` is
    exists()-then-open("wb"), so concurrent creators can all "win" (observed: up to 8 of 8).
    Use ``open(path, "xb")`` (O_EXCL) or write-temp-then-link for local stores.  If this
    fails, fsspec changed the implementation; re-check the race test with pipe_file."""
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.spec import AbstractFileSystem

    assert LocalFileSystem.pipe_file is AbstractFileSystem.pipe_file


def test_ranged_read(backend: Backend) -> None:
    fs, path = backend.fs, backend.path("blob")
    data = bytes(range(256)) * 64  # 16 KiB
    fs.pipe_file(path, data, mode="create")
    # Always pass start/end by keyword: s3fs.cat_file's 2nd positional parameter is version_id.
    assert fs.cat_file(path, start=0, end=10) == data[0:10]
    assert fs.cat_file(path, start=1000, end=5000) == data[1000:5000]
    assert fs.cat_file(path, start=len(data) - 7, end=len(data)) == data[-7:]
    assert fs.cat_file(path, start=15000) == data[15000:]
    assert fs.cat_file(path, start=16000, end=20000) == data[16000:]  # end past EOF is clipped
    assert fs.size(path) == len(data)


def test_positional_range_is_not_portable(backend: Backend) -> None:
    """``cat_file(path, start, end)`` positionally is wrong on s3fs (start lands in
    ``version_id``).  If the s3 case starts failing, s3fs changed its signature; the keyword
    form above stays correct either way."""
    fs, path = backend.fs, backend.path("blob")
    data = bytes(range(256)) * 4
    fs.pipe_file(path, data, mode="create")
    if backend.name == "s3":
        assert fs.cat_file(path, 0, 10) != data[0:10]
    else:
        assert fs.cat_file(path, 0, 10) == data[0:10]
