"""A fault-injecting HTTP/1.1 proxy on loopback, in front of moto_server or Azurite.

The client (s3fs, adlfs) is pointed at the proxy's address instead of the server's; every request
is forwarded unchanged (headers, body, signature), and a chosen fraction of them is answered with
a fault instead, the way real object stores misbehave under load:

- ``status``: an error answer without forwarding (503, 500, 429 with ``Retry-After``, S3's
  ``SlowDown`` XML error, Azure's ``ServerBusy``);
- ``status_after``: forward first, then answer the error anyway (the request took effect: a
  retried conditional create then meets its own object);
- ``reset_upload``: read half the request body, then reset the connection (no answer);
- ``reset_download``: forward, send the answer's head and half its body, then reset;
- ``stall``: forward, then hold the answer for ``stall`` seconds before sending it (or until the
  client closes the connection, giving up on it);
- ``latency``: every request waits ``latency`` seconds before it is forwarded;
- ``dead``: the listening socket is closed: connections are refused.

It runs an asyncio loop in a daemon thread; settings are plain attributes, changed between
operations by the test. Counts of what was injected are kept in ``injected``, and every request
of the current setting in ``log`` (method, target, fault, start and end on the monotonic clock),
so a test can count what a client sent and a bench can see what an operation waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

_S3_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>FAULT</RequestId></Error>"
)
_AZ_BUSY = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
    b"<Message>The server is busy.</Message></Error>"
)


@dataclass
class Fault:
    """What to inject, and into which fraction of requests."""

    kind: str = "none"  # none | status | status_after | reset_upload | reset_download | stall
    rate: float = 0.0
    status: int = 503
    code: str = ""  # "SlowDown" (S3 XML body) or "ServerBusy" (Azure)
    retry_after: float | None = None
    stall: float = 30.0
    methods: tuple[str, ...] = ()  # only these methods (empty: all)
    limit: int | None = None  # at most this many injections (None: no limit)
    after: int = 0  # the first this many matching requests pass untouched
    path: str = ""  # only requests whose target contains this (empty: all)


@dataclass
class Request:
    """One request as the proxy saw it; *end* stays None until its answer is sent (or it fails)."""

    method: str
    target: str
    fault: str
    start: float
    end: float | None = None
    client: int = 0  # the client's port: requests with the same one came on one connection


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    seed: int = 0
    fault: Fault = field(default_factory=Fault)
    latency: float = 0.0
    injected: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    matched: int = 0
    port: int = 0
    log: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._held = [0]
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._run(self._listen())

    # -- control, from the test's thread ---------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, fault: Fault | None = None, *, latency: float = 0.0) -> None:
        self.fault = fault or Fault()
        self.latency = latency
        self.injected.clear()
        self.requests = self.matched = 0
        self.log = []
        self._held = [0]  # answers held by this setting (earlier settings' stalls not counted)

    @property
    def holding(self) -> int:
        """Stalled answers of the current setting being held now."""
        return self._held[0]

    def kill(self) -> None:
        """Close the listening socket and every open connection: new ones are refused."""
        self._run(self._close())
        self._run(self._cancel_clients())

    def revive(self) -> None:
        self._run(self._listen())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._close())
            self._run(self._cancel_clients())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _cancel_clients(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._client, "127.0.0.1", self.port or 0, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- the proxy ----------------------------------------------------------------------------

    def _pick(self, method: str, target: str) -> str:
        self.requests += 1
        f = self.fault
        if f.kind == "none" or (f.methods and method not in f.methods):
            return "none"
        if f.path and f.path not in target:
            return "none"
        if f.limit is not None and sum(self.injected.values()) >= f.limit:
            return "none"
        self.matched += 1
        if self.matched <= f.after:
            return "none"
        return f.kind if self._rng.random() < f.rate else "none"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = int(peer[1]) if peer else 0
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    return
                method, headers = _parse(head)
                target = head.split(b" ", 2)[1].decode("latin-1")
                kind = self._pick(method, target)
                if kind != "none":
                    self.injected[kind] += 1
                request = Request(method, target, kind, time.monotonic(), client=client)
                self.log.append(request)
                try:
                    if not await self._serve(reader, writer, head, method, headers, kind):
                        return
                finally:
                    request.end = time.monotonic()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError,
                asyncio.CancelledError):
            pass  # the client went away, or the proxy is stopping
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     head: bytes, method: str, headers: dict[str, str], kind: str) -> bool:
        """Answer one request (or inject its fault); False when the connection is gone."""
        if headers.get("expect", "").lower() == "100-continue":
            # Answered here; upstream gets the request with its body, no Expect.
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            head = _drop_header(head, b"expect:")
        if kind == "reset_upload":
            length = int(headers.get("content-length", "0") or 0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.readexactly(length // 2), 5)
            _reset(writer)
            return False
        body = await _read_body(reader, headers)
        if self.latency:
            await asyncio.sleep(self.latency)
        if kind == "status":
            await self._answer_fault(writer, method)
            return True
        rhead, rbody = await self._forward(method, head, body)
        if kind == "status_after":
            await self._answer_fault(writer, method)
            return True
        if kind == "reset_download" and len(rbody) > 1:
            writer.write(rhead + rbody[: len(rbody) // 2])
            await writer.drain()
            _reset(writer)
            return False
        if kind == "stall":
            held = self._held
            held[0] += 1
            try:
                if not await _hold(reader, self.fault.stall):
                    return False  # the client gave up on this answer and closed the connection
            finally:
                held[0] -= 1
        writer.write(rhead + rbody)
        await writer.drain()
        return True

    async def _answer_fault(self, writer: asyncio.StreamWriter, method: str) -> None:
        f = self.fault
        body = b""
        extra = ""
        if f.code == "SlowDown":
            body = _S3_SLOWDOWN
            extra = "Content-Type: application/xml\r\n"
        elif f.code == "ServerBusy":
            body = _AZ_BUSY
            extra = "Content-Type: application/xml\r\nx-ms-error-code: ServerBusy\r\n"
        if f.retry_after is not None:
            extra += f"Retry-After: {f.retry_after:g}\r\n"
        reason = {429: "Too Many Requests", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(f.status, "Error")
        sent = b"" if method == "HEAD" else body
        writer.write(
            f"HTTP/1.1 {f.status} {reason}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
            + sent)
        await writer.drain()

    async def _forward(self, method: str, head: bytes, body: bytes) -> tuple[bytes, bytes]:
        """Send one request upstream on a connection of its own; the answer's head and body."""
        ureader, uwriter = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        try:
            head = _drop_header(head, b"connection:")
            uwriter.write(head[:-2] + b"Connection: close\r\n\r\n" + body)
            await uwriter.drain()
            rhead = await _read_head(ureader)
            if rhead is None:
                raise ConnectionResetError("upstream closed")
            status_line = rhead.split(b"\r\n", 1)[0]
            status = int(status_line.split()[1])
            _, rheaders = _parse(rhead)
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                rbody = b""
            elif "content-length" in rheaders or "chunked" in rheaders.get(
                    "transfer-encoding", ""):
                rbody = await _read_body(ureader, rheaders)
            else:
                rbody = await ureader.read()
                rhead = _with_length(rhead, len(rbody))
            # The client keeps its connection to us alive whatever upstream said.
            return _drop_header(rhead, b"connection:"), rbody
        finally:
            uwriter.close()


async def _hold(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait *seconds*, or until the client closes its connection (False). An HTTP/1.1 client
    sends nothing while it waits for an answer, so the reader sees only its going away."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if reader.at_eof() or reader.exception() is not None:
            return False
        await asyncio.sleep(min(0.05, max(0.0, deadline - asyncio.get_running_loop().time())))
    return True


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None


def _parse(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ", 1)[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return method, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            out += size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailers up to the blank line
                while True:
                    line = await reader.readuntil(b"\r\n")
                    out += line
                    if line == b"\r\n":
                        return bytes(out)
            out += await reader.readexactly(size + 2)
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""


def _drop_header(head: bytes, prefix: bytes) -> bytes:
    lines = head.split(b"\r\n")
    kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith(prefix)]
    return b"\r\n".join([lines[0], *kept]) + b"\r\n\r\n"


def _with_length(head: bytes, length: int) -> bytes:
    return head.rstrip(b"\r\n") + f"\r\nContent-Length: {length}\r\n\r\n".encode()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dropped connection looks to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def in_front_of(url: str) -> Iterator[FaultProxy]:
    """A proxy (injecting nothing until told) in front of the HTTP server at *url*, stopped
    afterwards."""
    proxy = FaultProxy("127.0.0.1", int(url.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.stop()

