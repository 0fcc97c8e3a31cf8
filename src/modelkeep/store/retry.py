"""The one retry policy for object-store calls: what is retried, how long, and the give-up error.

Object stores fail in ordinary ways under load: 503 ``SlowDown`` (S3) or ``ServerBusy`` (Azure),
429 with ``Retry-After``, a connection reset in the middle of a body, a response that stalls.
Two layers handle them, both configured from one :class:`RetryPolicy`:

1. The SDK's own retries, where they are right: botocore's ``standard`` mode (500, 502, 503,
   504, ``SlowDown`` and other throttling codes, connection errors, read timeouts) and
   azure-storage's ``ExponentialRetry`` (5xx, 408, connection errors; waiting as this module's
   loop does, not azure-storage's 2.5 s, then 4.5 s), each limited to ``sdk_attempts`` tries and
   given the policy's connect and read timeouts, so a stalled answer
   is abandoned after ``read_timeout`` seconds and tried again.
2. This module's loop around each call modelkeep makes on the filesystem, for what the SDKs do not
   retry: 429 (neither SDK retries it; ``Retry-After`` is honoured), a reset while a body is read
   (botocore's retries end when the headers arrive; s3fs's own loop is turned off because it
   multiplies every timeout by five), Azure ``ServerBusy`` beyond the SDK's tries, and any
   transient failure that outlasted the SDK's tries. Waits grow exponentially with full jitter,
   within ``attempts`` calls and ``deadline`` seconds per operation; an endpoint that refuses
   connections is given up after ``unreachable_after`` seconds.

A response that stalls is not only waited out: reads (GET, HEAD, LIST) and conditional creates
are *hedged*. When one has taken much longer than the same operation usually takes (four times
the 90th percentile of the last 64 calls, at least ``hedge_after`` seconds and at most half the
read timeout, so that a store slow everywhere still has its stalls hedged), an identical
second request is sent and the first answer wins, as "The Tail at Scale" (Dean and Barroso) and
AWS's S3 performance guidelines recommend for latency-sensitive clients. Both are safe to send
twice: a read changes nothing, and a create of a write-once object named by its hash that meets
its own twin is told "exists", which the object layer treats as stored. Other writes (overwrites,
deletes) are never hedged. The copies still out when one answers are cancelled (on s3fs and
adlfs, whose calls are coroutines), which closes their connections: a stalled request left to
the read timeout would hold a connection of the client's pool and then be sent again by the SDK.
The budget is a tenth of the calls made, plus eight for the start (few calls made yet, new
connections), so a store that is slow everywhere is not sent twice the load; a copy that stalls
too gets another after the same delay, up to four requests in all. A stalled answer then costs
about ``hedge_after`` seconds instead of ``read_timeout`` (bench/RESULTS-faults.md).

What is measured against real servers behind a fault-injecting proxy is in tests/test_faults.py
and bench/faults.py. A give-up is one :class:`~modelkeep.errors.StoreBusyError` line naming the
store, the operation, what the store answered and how often, e.g. ``store s3://b/p: PUT answered
503 SlowDown 8 times in 41 s``.

Conditional creates stay correct under retries: a create retried after its first attempt landed
meets its own object and is told "exists" (S3 412, Azure 409), which the object layer already
treats as success, since an object's name is the hash of its bytes.

Configured per store, in the store's options (``modelkeep.toml``)::

    [stores.team]
    url = "s3://ml-models/keep"
    options = { retry = { attempts = 8, deadline = 120, read_timeout = 20 } }
"""

from __future__ import annotations

import errno
import functools
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from typing import Any

from modelkeep.errors import ConfigError, StoreBusyError, StoreUnreachableError


@dataclass(frozen=True)
class RetryPolicy:
    """How object-store calls are retried. Times in seconds."""

    attempts: int = 8  # calls of one operation by modelkeep (each may be retried by the SDK)
    sdk_attempts: int = 3  # tries the SDK makes of one request (botocore max_attempts)
    deadline: float = 120.0  # no new attempt starts after this long
    unreachable_after: float = 10.0  # give up this soon when the endpoint refuses connections
    backoff: float = 0.5  # the first wait; then doubled each attempt, with full jitter
    max_backoff: float = 10.0
    max_retry_after: float = 30.0  # a longer Retry-After is not waited for
    connect_timeout: float = 5.0
    read_timeout: float = 10.0  # a response idle this long is abandoned and retried
    hedge_after: float = 0.3  # a slow read or create is sent again after at least this; 0: never

    @classmethod
    def from_options(cls, value: object) -> RetryPolicy:
        """The policy from a store's ``retry`` option (a table; missing keys keep defaults)."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigError(
                "the store option `retry` must be a table",
                hint="e.g. retry = { attempts = 8, deadline = 120 }")
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown retry setting(s) {', '.join(unknown)}",
                hint=f"known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for key, raw in value.items():
            if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
                raise ConfigError(f"retry setting {key} must be a non-negative number, "
                                  f"not {raw!r}")
            values[key] = int(raw) if key in ("attempts", "sdk_attempts") else float(raw)
        policy = cls(**values)
        if policy.attempts < 1 or policy.sdk_attempts < 1:
            raise ConfigError("retry attempts and sdk_attempts must be at least 1")
        return policy

    def wait(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1``: full jitter, or the server's word."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return rng.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class Transient:
    """A failure worth another attempt, as the store reported it."""

    what: str  # "503 SlowDown", "429", "a connection reset", "no answer within 10 s"
    answers: int = 1  # answers of this kind behind the exception (the SDK's tries included)
    retry_after: float | None = None
    unreachable: bool = False
    sdk_retried: bool = False  # the SDK made all its tries, uncounted in *answers*


_RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_RETRIED_CODES = frozenset({
    "SlowDown", "ServerBusy", "Throttling", "ThrottlingException", "TooManyRequests",
    "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "OperationTimedOut", "PriorRequestNotComplete", "RequestLimitExceeded",
})
_UNREACHABLE_NAMES = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ServiceRequestError",
    "ClientConnectorError", "ConnectionRefusedError",
})
_RESET_NAMES = frozenset({
    "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError",
    "ConnectionClosedError", "ServerDisconnectedError", "ClientPayloadError",
    "ClientOSError", "IncompleteRead", "IncompleteReadError", "ServiceResponseError",
    "ContentDecodingError", "ResponseParserError", "ClientConnectionError",
})
_TIMEOUT_NAMES = frozenset({
    "ReadTimeoutError", "TimeoutError", "FSTimeoutError", "ServerTimeoutError", "timeout",
})


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _retry_after(headers: Mapping[str, Any] | None) -> float | None:
    if not headers:
        return None
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None  # an HTTP date: fall back to the backoff
    return None


def _status_of(exc: BaseException) -> Transient | None:
    """An HTTP error answer (botocore ``ClientError``, azure ``HttpResponseError``)."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping) and "Error" in response:  # botocore ClientError
        meta = response.get("ResponseMetadata") or {}
        status = int(meta.get("HTTPStatusCode") or 0)
        code = str(response["Error"].get("Code") or "")
        if status in _RETRIED_STATUS or code in _RETRIED_CODES:
            label = f"{status} {code}" if code and code != str(status) else str(status)
            headers = meta.get("HTTPHeaders")
            return Transient(label, int(meta.get("RetryAttempts") or 0) + 1,
                             _retry_after(headers))
        return None
    azure_status = getattr(exc, "status_code", None)
    if isinstance(azure_status, int) and response is not None:  # azure-core HttpResponseError
        status = azure_status
        error_code = getattr(exc, "error_code", None)
        code = str(getattr(error_code, "value", error_code) or "")  # StorageErrorCode is an enum
        if status in _RETRIED_STATUS or code in _RETRIED_CODES:
            label = f"{status} {code}" if code else str(status)
            # azure-storage keeps no count of its tries; it makes all of them for a 5xx.
            return Transient(label, 1, _retry_after(getattr(response, "headers", None)),
                             sdk_retried=status >= 500 and status not in (501, 505))
    return None


def transient(exc: BaseException) -> Transient | None:
    """The retryable failure behind *exc*, or None when another attempt would not help."""
    if isinstance(exc, (FileNotFoundError, FileExistsError, IsADirectoryError,
                        NotADirectoryError, PermissionError)):
        return None
    chain = _chain(exc)
    for link in chain:
        found = _status_of(link)
        if found is not None:
            return found
    names = {type(link).__name__ for link in chain}
    for link in chain:
        names.update(t.__name__ for t in type(link).__mro__)
    if names & _UNREACHABLE_NAMES or any(
            isinstance(link, OSError) and link.errno == errno.ECONNREFUSED for link in chain):
        return Transient("no connection", unreachable=True)
    if names & _TIMEOUT_NAMES or "asyncio.TimeoutError" in names:
        return Transient("no answer in time")
    if names & _RESET_NAMES:
        return Transient("a connection reset")
    # s3fs turns 503 and SlowDown into OSError(EBUSY) and keeps the answer as __cause__ (above);
    # without it, the errno is all there is.
    if isinstance(exc, OSError) and exc.errno == errno.EBUSY:
        return Transient("busy")
    return None


_OPERATIONS = {
    "pipe_file": "PUT", "cat_file": "GET", "cat": "GET", "exists": "HEAD", "info": "HEAD",
    "size": "HEAD", "ls": "LIST", "find": "LIST", "rm_file": "DELETE", "cp_file": "COPY",
}


_HEDGED = frozenset({"GET", "HEAD", "LIST"})  # and PUT with mode="create"
_HEDGE_SHARE = 0.1  # at most this share of calls is sent twice, plus _HEDGE_BURST
_HEDGE_BURST = 8  # for the start, when few calls were made and connections are new
_HEDGE_FACTOR = 4.0  # a call is slow at this many times the recent 90th percentile
# Requests of one call at most: a copy can stall as its original did. With 5% of answers
# stalled, three copies all stall once in 8000 calls, in one 100 MB register and pull out of
# eight, which then waits out the read timeout; four, once in 160 000 calls. Copies that lose are
# cancelled, so a fourth costs a request, not a connection held until the read timeout.
_HEDGE_COPIES = 4
_HEDGE_CAP = 0.5  # a copy is sent after at most this share of the read timeout


class _Hedger:
    """When to send a duplicate of a slow call: recent call times per operation, and the budget."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._floor = policy.hedge_after
        self._ceiling = policy.read_timeout
        self._times: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._calls = 0
        self._hedges = 0

    def delay(self, operation: str) -> float | None:
        """Seconds after which a duplicate is worth sending; None: never (hedging is off)."""
        if self._floor <= 0:
            return None
        with self._lock:
            self._calls += 1
            recent = sorted(self._times.get(operation, ()))
        p90 = recent[int(0.9 * (len(recent) - 1))] if recent else 0.0
        # Capped below the read timeout, never turned off by it: when a slow store (or a busy
        # client) makes 4 x p90 reach the read timeout, a stalled call would otherwise wait the
        # timeout out and then be retried by the SDK, 10-30 s where a copy costs a few.
        delay = max(self._floor, _HEDGE_FACTOR * p90)
        return min(delay, _HEDGE_CAP * self._ceiling) if self._ceiling > 0 else delay

    def record(self, operation: str, seconds: float) -> None:
        with self._lock:
            self._times.setdefault(operation, deque(maxlen=64)).append(seconds)

    def allow(self) -> bool:
        with self._lock:
            if self._hedges >= _HEDGE_SHARE * self._calls + _HEDGE_BURST:
                return False
            self._hedges += 1
            return True


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    # A forked child has the parent's pool object but none of its threads: work submitted to
    # it would never run. The child makes a pool of its own (fsspec resets its loop alike).
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _executor() -> ThreadPoolExecutor:
    # Shared by every store in the process. A stalled call holds its thread until the read
    # timeout abandons it, so there are more threads than any store's jobs.
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(64, thread_name_prefix="modelkeep-store-call")
        return _pool


class RetryingFileSystem:
    """An fsspec filesystem whose calls modelkeep makes (:data:`_OPERATIONS`) are retried under
    a :class:`RetryPolicy`, slow reads and creates hedged; every other attribute is the wrapped
    filesystem's own."""

    def __init__(self, fs: Any, where: str, policy: RetryPolicy) -> None:
        self._fs = fs
        self._where = where
        self._policy = policy
        self._rng = random.Random()
        self._hedger = _Hedger(policy)
        self.hedged = 0  # duplicates sent (for tests and the fault bench)

    @property
    def wrapped(self) -> Any:
        return self._fs

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if name in _OPERATIONS and callable(attr):
            return functools.partial(self._call, _OPERATIONS[name], attr, name)
        return attr

    def _call(self, operation: str, fn: Callable[..., Any], name: str, *args: Any,
              **kwargs: Any) -> Any:
        policy = self._policy
        start = time.monotonic()
        attempt = 0
        answers = 0
        while True:
            attempt += 1
            try:
                return self._attempt(operation, fn, name, args, kwargs)
            except Exception as exc:
                fault = transient(exc)
                if fault is None:
                    raise
                answers += policy.sdk_attempts if fault.sdk_retried else fault.answers
                elapsed = time.monotonic() - start
                delay = policy.wait(attempt, fault.retry_after, self._rng)
                limit = min(policy.deadline, policy.unreachable_after) if fault.unreachable \
                    else policy.deadline
                if attempt < policy.attempts and elapsed + delay <= limit:
                    time.sleep(delay)
                    continue
                raise give_up(self._where, operation, fault, attempt, answers,
                              elapsed) from exc


    def _attempt(self, operation: str, fn: Callable[..., Any], name: str,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One attempt: the call, and a duplicate of it if it is slow and may be sent twice."""
        hedgeable = operation in _HEDGED or (operation == "PUT" and kwargs.get("mode") == "create")
        delay = self._hedger.delay(operation) if hedgeable else None
        if delay is None:
            return fn(*args, **kwargs)
        send = self._sender(operation, fn, name, args, kwargs)
        pending: set[Future[Any]] = {send()}
        sent = 1
        failure: BaseException | None = None
        try:
            while pending:
                # Another copy after each *delay* without an answer (the copy can stall too), up
                # to _HEDGE_COPIES in all and within the budget; then wait for whichever answers.
                more = sent < _HEDGE_COPIES
                done, _ = wait(pending, timeout=delay if more else None,
                               return_when=FIRST_COMPLETED)
                if not done:
                    # Out of budget: asked again after the next delay, when other calls have
                    # added to it.
                    if self._hedger.allow():
                        self.hedged += 1
                        sent += 1
                        pending.add(send())
                    continue
                for future in done:
                    pending.discard(future)
                    exc = future.exception()
                    if exc is None:
                        return future.result()
                    if isinstance(exc, FileExistsError) and operation == "PUT" and pending:
                        # A create told "exists" while its twin is still out: the twin's bytes
                        # landed (the stalled answer is theirs), so this create stored the
                        # object.
                        return None
                    # A definite answer ("exists", "not found", refused) is the answer; a
                    # transient one waits for the twin still in flight.
                    if transient(exc) is None:
                        raise exc
                    failure = failure or exc
        finally:
            # The copies still out are not waited for. On an async filesystem they are
            # cancelled, which closes their connections: left alone, each would hold a
            # connection of the client's pool until the read timeout, then be retried by the
            # SDK, and a few stalls would leave the next calls queued behind them.
            for future in pending:
                future.cancel()
        assert failure is not None
        raise failure

    def _sender(self, operation: str, fn: Callable[..., Any], name: str,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Future[Any]]:
        """What sends one copy of the call and returns its future: the filesystem's coroutine
        on its event loop where it has one (s3fs, adlfs), so that a copy can be cancelled;
        else the blocking call in a thread of the shared pool."""
        import asyncio  # only filesystems with an event loop (s3fs, adlfs) get here with one

        record = self._hedger.record
        coroutine = getattr(self._fs, f"_{name}", None) if getattr(
            self._fs, "async_impl", False) else None
        loop = getattr(self._fs, "loop", None) if coroutine is not None else None
        if coroutine is not None and isinstance(loop, asyncio.AbstractEventLoop) \
                and loop.is_running():
            running = loop

            async def timed_async() -> Any:
                start = time.monotonic()
                result = await coroutine(*args, **kwargs)
                record(operation, time.monotonic() - start)
                return result

            return lambda: asyncio.run_coroutine_threadsafe(timed_async(), running)

        def timed() -> Any:
            start = time.monotonic()
            result = fn(*args, **kwargs)
            record(operation, time.monotonic() - start)
            return result

        pool = _executor()
        return lambda: pool.submit(timed)


def give_up(where: str, operation: str, fault: Transient, attempts: int, answers: int,
            elapsed: float) -> StoreBusyError | StoreUnreachableError:
    """The one-line error for a fault that outlasted the policy."""
    seconds = f"{elapsed:.0f} s" if elapsed >= 1 else f"{elapsed:.1f} s"
    if fault.unreachable:
        return StoreUnreachableError(
            f"store {where} is unreachable: {operation} found no connection "
            f"{_times(attempts)} in {seconds}")
    if fault.what[:1].isdigit() or fault.what == "busy":
        said = f"answered {fault.what} {_times(max(answers, attempts))}"
    else:
        said = f"met {fault.what} {_times(max(answers, attempts))}"
    return StoreBusyError(f"store {where}: {operation} {said} in {seconds}")


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def configure_sdk(protocol: str, options: dict[str, Any], policy: RetryPolicy) -> None:
    """Put the policy's SDK retries and timeouts into fsspec options, before the filesystem is
    made (s3fs passes ``config_kwargs`` to botocore's ``Config``)."""
    if protocol == "s3":
        config = dict(options.pop("config_kwargs", {}) or {})
        config.setdefault("connect_timeout", policy.connect_timeout)
        config.setdefault("read_timeout", policy.read_timeout)
        config.setdefault("retries", {"max_attempts": policy.sdk_attempts, "mode": "standard"})
        # botocore's default, 10 connections, is fewer than the calls a register has in flight
        # (16 workers, and the hedges of stalled calls, which hold theirs until the read timeout).
        config.setdefault("max_pool_connections", 64)
        options["config_kwargs"] = config


def _sdk_backoff(policy: RetryPolicy, rng: random.Random, settings: Mapping[str, Any]) -> float:
    """The wait before the SDK's retry number ``settings["count"]`` (1 for the first)."""
    return policy.wait(max(1, int(settings.get("count") or 1)), None, rng)


def configure_filesystem(protocol: str, fs: Any, policy: RetryPolicy) -> None:
    """Set what cannot be passed as an option on a made filesystem.

    s3fs retries some failures five times itself, on top of botocore's tries and with its own
    waits: that loop is reduced to one try, leaving one count and one clock (this module's).
    adlfs builds its Azure client without retry or timeout settings, so the client's retry
    policy (azure-storage's ``ExponentialRetry``: 15 s before the first retry by default, its
    tries and its waits) and its transport's timeouts are set in place.
    """
    if protocol == "s3" and hasattr(fs, "retries"):
        fs.retries = 1
    if protocol == "az":
        client = getattr(fs, "service_client", None)
        config = getattr(client, "_config", None)
        retry = getattr(config, "retry_policy", None)
        if retry is not None and hasattr(retry, "initial_backoff"):
            retry.total_retries = policy.sdk_attempts - 1
            retry.connect_retries = retry.read_retries = retry.status_retries = (
                policy.sdk_attempts - 1)
            # azure-storage's own formula waits initial_backoff + increment_base ** n, from the
            # first retry on (n = 1), with a small jitter: 2.5 s, then 4.5 s, for a 503 that
            # botocore retries after 0-1 s, then 0-2 s. Its waits are the policy's full jitter
            # instead, as modelkeep's own loop waits.
            retry.get_backoff_time = functools.partial(_sdk_backoff, policy, random.Random())
        pipeline = getattr(client, "_pipeline", None)
        transport = getattr(pipeline, "_transport", None)
        connection = getattr(transport, "connection_config", None)
        if connection is not None:
            connection.timeout = policy.connect_timeout
            connection.read_timeout = policy.read_timeout
