"""Object-store faults survived, or given up with one clear line (issue: faults survived).

Real moto S3 and Azurite servers, with tests/faultproxy.py between them and modelkeep injecting
what real stores do under load: 5xx, 429 with Retry-After, SlowDown / ServerBusy, resets in the
middle of a body on upload and download, stalled answers, a dead endpoint. Each test asserts the
bytes that come back and, after a give-up, that no partial version is visible and that a re-run
sends only what is missing. Models are a few MB; the full matrix is bench/faults.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import modelkeep
from modelkeep.api import Keep
from modelkeep.cli._errors import report
from modelkeep.errors import StoreBusyError, StoreUnreachableError
from modelkeep.store import Store
from modelkeep.store.codec import Kind
from modelkeep.store.location import parse_location
from modelkeep.store.retry import RetryPolicy, _Hedger
from tests.backends import unique_name
from tests.faultproxy import Fault, FaultProxy, Request
from tests.helpers import tensors, tree_digest, write_model


@dataclass
class Faulty:
    """A store URL whose every request goes through *proxy*."""

    name: str
    proxy: FaultProxy
    options: dict[str, Any]
    make_url: Any
    busy_code: str  # the backend's "slow down" error code

    def store_options(self, **retry: float) -> dict[str, Any]:
        # Short waits keep the module fast; the default policy's figures are bench/faults.py's.
        return {**self.options, "retry": {**FAST, **retry}}

    def open(self, registry: str, url: str | None = None, **retry: float) -> Keep:
        return modelkeep.open(store=url or self.make_url(), registry=registry,
                              store_options=self.store_options(**retry))


FAST = {"backoff": 0.05, "max_backoff": 0.5}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture(scope="module")
def s3_proxy(moto_s3: Any) -> Iterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", _port(moto_s3.endpoint_url))
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def az_proxy(azurite: Any) -> Iterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", _port(azurite.blob_endpoint))
    yield proxy
    proxy.stop()


@pytest.fixture(params=["s3", "az"])
def faulty(request: pytest.FixtureRequest) -> Iterator[Faulty]:
    if request.param == "s3":
        moto = request.getfixturevalue("moto_s3")
        proxy = request.getfixturevalue("s3_proxy")
        bucket = moto.make_bucket()
        options = {**moto.storage_options,
                   "client_kwargs": {"endpoint_url": proxy.url, "region_name": moto.region}}
        backend = Faulty("s3", proxy, options, lambda: f"s3://{bucket}/{unique_name('st')}",
                         "SlowDown")
    else:
        azurite = request.getfixturevalue("azurite")
        proxy = request.getfixturevalue("az_proxy")
        container = azurite.make_container()
        port = _port(azurite.blob_endpoint)
        options = {"connection_string": azurite.connection_string.replace(
            f":{port}/", f":{proxy.port}/")}
        backend = Faulty("az", proxy, options, lambda: f"az://{container}/{unique_name('st')}",
                         "ServerBusy")
    proxy.set()
    try:
        yield backend
    finally:
        proxy.set()
        if proxy.port and proxy._server is None:
            proxy.revive()


def _model(tmp_path: Path, seed: int = 0) -> Path:
    # 8 tensors of 512 KiB, a config and a 300 kB random vocabulary: about 4.5 MB, 20 objects.
    return write_model(tmp_path / f"model-{seed}", tensors(seed=seed, n=8, rows=512, cols=512))


FAULTS = {
    "503": Fault("status", 0.2, 503),
    "429-retry-after": Fault("status", 0.1, 429, retry_after=1),
    "slowdown": Fault("status", 0.2, 503, code="busy"),
    "503-after-it-landed": Fault("status_after", 0.2, 503),
    "reset-upload": Fault("reset_upload", 0.3, methods=("PUT",)),
    "reset-download": Fault("reset_download", 0.3, methods=("GET",)),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_register_and_pull_survive_transient_faults(
    faulty: Faulty, fault: str, tmp_path: Path, mlflow_sqlite_uri: str
) -> None:
    keep = faulty.open(mlflow_sqlite_uri)
    model = _model(tmp_path)
    spec = FAULTS[fault]
    if spec.code == "busy":
        spec = Fault("status", spec.rate, 503, code=faulty.busy_code)
    faulty.proxy.set(spec)
    name = unique_name()
    version = keep.register(name, model)
    out = keep.pull(version.ref, tmp_path / "out")
    assert sum(faulty.proxy.injected.values()) >= 3  # the faults did happen
    assert tree_digest(out) == tree_digest(model)
    faulty.proxy.set()
    assert keep.verify(version.ref).ok


def test_sync_and_gc_survive_503s(faulty: Faulty, tmp_path: Path,
                                  mlflow_sqlite_uri: str) -> None:
    local = modelkeep.open(store=str(tmp_path / "local"), registry=mlflow_sqlite_uri)
    name = unique_name()
    v1 = local.register(name, _model(tmp_path, 1))
    v2 = local.register(name, _model(tmp_path, 2))
    dst = Store.open(faulty.make_url(), faulty.store_options())
    faulty.proxy.set(Fault("status", 0.1, 503, code=faulty.busy_code))
    copied = local.sync(dst, [name])
    assert copied.snapshots_copied == 2
    store_v2 = set(dst.db.iter_ids(Kind.CHUNK))
    dst.delete_snapshot(v2.snapshot_id)
    now = timedelta(0)
    dst.gc(grace=now)  # hides what v2 alone used
    dst.gc(grace=now)  # deletes it
    assert sum(faulty.proxy.injected.values()) >= 3
    faulty.proxy.set()
    kept = {cid for f in local.snapshot(v1.ref).files for cid, _n in f.chunks}
    assert set(dst.db.iter_ids(Kind.CHUNK)) == kept < store_v2
    assert dst.verify([v1.snapshot_id]).ok


def test_stalled_answer_is_abandoned_and_retried(faulty: Faulty, tmp_path: Path,
                                                 mlflow_sqlite_uri: str) -> None:
    keep = faulty.open(mlflow_sqlite_uri, read_timeout=3)
    model = _model(tmp_path)
    version = keep.register(model.name, model)
    # The first chunk read stalls for 60 s; the read timeout abandons it and the read is retried.
    # (With the default read timeout, 10 s, bench/faults.py measures the same.)
    faulty.proxy.set(Fault("stall", 1.0, stall=60, methods=("GET",), limit=1))
    start = time.monotonic()
    out = keep.pull(version.ref, tmp_path / "out")
    assert faulty.proxy.injected["stall"] == 1
    assert time.monotonic() - start < 3 + 5
    assert tree_digest(out) == tree_digest(model)


def test_slow_answers_are_hedged(faulty: Faulty, tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    # The read timeout is as long as the stall, so a call can only end while its answer is still
    # held if a duplicate of it was sent and answered.
    keep = faulty.open(mlflow_sqlite_uri, read_timeout=300, hedge_after=0.5)
    model = _model(tmp_path)
    faulty.proxy.set(Fault("stall", 1.0, stall=300, methods=("PUT",), path="/chunks/", limit=1))
    version = keep.register(model.name, model)
    assert faulty.proxy.injected["stall"] == 1
    faulty.proxy.set(Fault("stall", 1.0, stall=300, methods=("GET",), path="/chunks/", limit=1))
    out = tmp_path / "out"
    keep.pull(version.ref, out)
    assert faulty.proxy.injected["stall"] == 1
    assert tree_digest(out) == tree_digest(model)


def _closed_soon(requests: list[Request], within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while any(r.end is None for r in requests):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_copy_that_lost_is_cancelled(faulty: Faulty) -> None:
    # A stalled request whose twin answered is abandoned at once, closing its connection: left
    # to the read timeout it would hold a connection of the client's pool (and a thread), then
    # be sent again by the SDK, and a few such stalls would queue the calls that follow.
    url = faulty.make_url()
    fs = parse_location(url, faulty.store_options(hedge_after=0.2, read_timeout=60)).filesystem()
    path = f"{url.split('://', 1)[1]}/obj"
    calls = {
        # The stalled create lands; its twin is told "exists": stored.
        "PUT": lambda: fs.pipe_file(path, b"x" * 1000, mode="create"),
        "GET": lambda: fs.cat_file(path) == b"x" * 1000,
        "HEAD": lambda: fs.exists(path),
    }
    for method, call in calls.items():
        faulty.proxy.set(Fault("stall", 1.0, stall=60, methods=(method,), limit=1))
        assert call() is not False
        stalled = [r for r in faulty.proxy.log if r.fault == "stall"]
        assert len(stalled) == 1
        assert _closed_soon(stalled), method  # closed by the client, long before 60 s
        assert faulty.proxy.holding == 0


def test_asking_whether_an_object_exists_is_one_request(faulty: Faulty) -> None:
    # A register asks before uploading a large chunk; each request is one more that can stall.
    store = Store.open(faulty.make_url(), faulty.store_options())
    store.ensure_initialized()
    present = store.db.object_id(b"present")
    store.db.put(Kind.CHUNK, present, b"present")
    for oid, expected in ((present, True), (store.db.object_id(b"missing"), False)):
        faulty.proxy.set()
        assert store.db.exists(Kind.CHUNK, oid) is expected
        assert len(faulty.proxy.log) == 1, [(r.method, r.target) for r in faulty.proxy.log]


def test_only_reads_and_creates_are_sent_twice(faulty: Faulty) -> None:
    url = faulty.make_url()
    fs = parse_location(url, faulty.store_options(hedge_after=0.1, read_timeout=30)).filesystem()
    root = url.split("://", 1)[1]
    fs.pipe_file(f"{root}/first", b"w", mode="create")
    hedged = fs.hedged  # the first call may be hedged: nothing was measured yet
    # A write that may overwrite is sent once, however slow: a late duplicate could undo a
    # newer write of the same name.
    faulty.proxy.set(Fault("stall", 1.0, stall=1.5, methods=("PUT",), limit=1))
    fs.pipe_file(f"{root}/plain", b"x")
    assert faulty.proxy.injected["stall"] == 1
    assert fs.hedged == hedged
    # A create of a write-once object may be: its twin is told "exists".
    faulty.proxy.set(Fault("stall", 1.0, stall=10, methods=("PUT",), limit=1))
    # The stalled create landed first and its twin is told "exists": the call stored the object.
    fs.pipe_file(f"{root}/made", b"x", mode="create")
    assert faulty.proxy.injected["stall"] == 1
    assert fs.hedged == hedged + 1
    assert fs.cat_file(f"{root}/made") == b"x"


GIVE_UP = re.compile(
    r"^store (s3|az)://\S+: (PUT|GET|HEAD|LIST) answered 503 (SlowDown|ServerBusy) "
    r"\d+ times in \d+(\.\d)? s \(try again later")


def test_persistent_fault_is_one_clear_line_and_a_rerun_sends_only_what_is_missing(
    faulty: Faulty, tmp_path: Path, mlflow_sqlite_uri: str
) -> None:
    url = faulty.make_url()
    keep = faulty.open(mlflow_sqlite_uri, url, attempts=3, deadline=5)
    model = _model(tmp_path)
    name = unique_name()
    # Every upload after the fifth is refused: some chunks land, the version cannot.
    faulty.proxy.set(Fault("status", 1.0, 503, code=faulty.busy_code, methods=("PUT",),
                           after=5))
    with pytest.raises(StoreBusyError) as err:
        keep.register(name, model)
    message = str(err.value)
    assert GIVE_UP.match(message), message
    assert "\n" not in message
    assert report(err.value) == 5
    assert name not in keep.models()  # nothing partial is visible

    faulty.proxy.set()
    again = faulty.open(mlflow_sqlite_uri, url).register(name, model)
    assert again.version == 1
    assert again.bytes_added is not None and 0 < again.bytes_added < again.size
    assert tree_digest(keep.pull(again.ref, tmp_path / "out")) == tree_digest(model)


def test_dead_endpoint_is_a_clear_error_within_30_s(faulty: Faulty, tmp_path: Path,
                                                    mlflow_sqlite_uri: str) -> None:
    keep = modelkeep.open(store=faulty.make_url(), registry=mlflow_sqlite_uri,
                          store_options=faulty.options)  # the default policy
    model = _model(tmp_path)
    faulty.proxy.kill()
    start = time.monotonic()
    with pytest.raises(StoreUnreachableError) as err:
        keep.register(unique_name(), model)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert re.match(r"^store (s3|az)://\S+ is unreachable", message), message
    assert report(err.value) == 5


def test_a_slow_store_still_has_its_stalls_hedged() -> None:
    # When every call is slow (4 x p90 at or past the read timeout), a stalled call is still
    # sent again before the read timeout, not left to wait it out and the SDK's retry.
    hedger = _Hedger(RetryPolicy(read_timeout=10, hedge_after=0.3))
    for _ in range(64):
        hedger.record("PUT", 4.0)
    delay = hedger.delay("PUT")
    assert delay is not None and delay <= 5.0
    assert _Hedger(RetryPolicy(hedge_after=0)).delay("PUT") is None
