"""The checkpoint helper process: registering a training run's checkpoints outside its GIL.

With ``Tracker(worker="process")`` the tracker's worker thread hands each registration to a
helper process, which opens the same store and registry and does the work: hashing, writing
chunks, MLflow's SQL. Registering is mostly Python holding a GIL; on a thread of the training
process that is the training loop's GIL. In the helper, the worker thread only waits on a pipe.
(Measured on two cores, the paced worker thread cost the loop no more than the helper does, and
the helper's start costs seconds of CPU; hence it is an option, not the default.)

This module owns both ends:

* :class:`HelperKeep` (training process): starts ``python -m modelkeep.helper`` on first use,
  sends one request at a time and returns its result, raising the helper's errors as the same
  :mod:`modelkeep.errors` classes. It can stand in for the three ``Keep`` calls a tracker makes:
  :meth:`~HelperKeep.register`, :meth:`~HelperKeep.set_alias` and :meth:`~HelperKeep.set_tag`.
  Each reply carries the helper's CPU time for the request, which the tracker's pacing counts.
* :func:`main` (helper): opens the Keep from :func:`reopen_spec`'s description of the
  training process's one and answers requests until the pipe closes.

Only a Keep that can be opened again from its description is used this way: one made by
:func:`modelkeep.open` with a registry URI, JSON-able store options, and plugins that all come
from the built-ins or installed entry points (a plugin registered in code exists only in the
training process). :func:`reopen_spec` returns None for any other, and the tracker refuses
``worker="process"`` for it.

Requests are length-prefixed pickles on the helper's stdin; replies come on a pipe of their own
(the helper's fd 1 points at stderr, so a library printing in the helper cannot corrupt one). The
pipe joins a process to the child it started, so nothing untrusted is unpickled. The helper
ignores SIGINT, so Ctrl-C in a terminal stops training while the helper finishes its request;
it exits when its stdin closes (the training process closed the tracker, exited or died).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from modelkeep import errors
from modelkeep.errors import ModelkeepError

if TYPE_CHECKING:
    from modelkeep.api import Keep, ModelVersion

_HEADER = struct.Struct("!I")
START_TIMEOUT = 120.0  # seconds for the helper to import and open the store and registry
ORIGINS_REOPENABLE = ("builtin", "entry point")


def reopen_spec(keep: Keep) -> dict[str, Any] | None:
    """How the helper opens a Keep like *keep*, or None when it cannot be reopened faithfully."""
    spec = getattr(keep, "_reopen", None)
    if spec is None or os.name != "posix":  # the reply pipe is an inherited file descriptor
        return None
    try:
        plugins = keep.plugins.plugins_info()
    except AttributeError:  # a plain pluggy manager: origins unknown
        return None
    if any(info.origin not in ORIGINS_REOPENABLE for info in plugins):
        return None
    try:
        json.dumps(spec)
    except (TypeError, ValueError):  # store options holding objects (credentials, sessions)
        return None
    return {**spec, "plugins": sorted(info.name for info in plugins)}


def _write(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _describe(exc: BaseException) -> dict[str, Any]:
    """An error as data: modelkeep's own keep their class, hint and reasons."""
    if isinstance(exc, ModelkeepError) and getattr(errors, type(exc).__name__, None) is type(exc):
        return {"class": type(exc).__name__, "message": exc.message, "hint": exc.hint,
                "reasons": list(getattr(exc, "reasons", ()))}
    return {"class": None, "message": f"{type(exc).__name__}: {exc}", "hint": None, "reasons": []}


def _rebuild(info: Mapping[str, Any]) -> ModelkeepError:
    cls = getattr(errors, info["class"] or "", None)
    if not (isinstance(cls, type) and issubclass(cls, ModelkeepError)):
        return ModelkeepError(info["message"], hint=info["hint"] or None)
    # Built without each class's own __init__ (MissingExtraError takes other arguments), then
    # given what ModelkeepError.__init__ sets; the message was redacted in the helper.
    exc = cls.__new__(cls)
    Exception.__init__(exc, info["message"])
    exc.message, exc.hint = info["message"], info["hint"] or ""
    if issubclass(cls, errors.VetoError):
        exc.reasons = tuple(info["reasons"])
    if issubclass(cls, errors.CheckpointError):
        exc.failures = ()
    return exc


class HelperKeep:
    """The training process's end of one helper process, for one tracker's worker thread."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        self.last_cpu = 0.0  # the helper's CPU seconds for the last request
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies: IO[bytes] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc is not None else None
        return f"HelperKeep(pid={pid})"

    # -- the Keep calls a tracker makes ----------------------------------------------------------

    def register(self, name: str, path: str | os.PathLike[str], **kwargs: Any) -> ModelVersion:
        # Absolute: the helper's working folder is this process's when the Keep was opened.
        result: ModelVersion = self._call("register", name, os.path.abspath(path), **kwargs)
        return result

    def set_alias(self, version: ModelVersion | str, alias: str) -> ModelVersion:
        ref = version if isinstance(version, str) else version.ref
        result: ModelVersion = self._call("set_alias", ref, alias)
        return result

    def set_tag(self, name: str, version: int, key: str, value: str) -> None:
        self._call("set_tag", name, version, key, value)

    # -- the process -----------------------------------------------------------------------------

    def _start(self) -> None:
        import modelkeep

        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        # The helper imports the same modelkeep as this process, installed or not.
        package_root = str(Path(modelkeep.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH")) if p
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "modelkeep.helper", str(write_fd)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=None,
                cwd=self.spec["cwd"], env=env, pass_fds=(write_fd,), close_fds=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._proc = proc
        self._replies = os.fdopen(read_fd, "rb")
        assert proc.stdin is not None
        with contextlib.suppress(OSError):  # it died at start: the reply read below says so
            _write(proc.stdin, ("open", (self.spec,), {}))
        try:
            self._answer("open")
        except BaseException:
            self._stop()  # the next request starts a new helper, which tries again
            raise

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            with contextlib.suppress(OSError):  # a dead helper: the reply read says so
                _write(self._proc.stdin, (op, args, kwargs))
            return self._answer(op)

    def _answer(self, op: str) -> Any:
        assert self._replies is not None and self._proc is not None
        try:
            status, payload, cpu = _read(self._replies)
        except (EOFError, OSError):
            code = self._proc.wait()
            self._stop()
            raise errors.StoreError(
                f"the modelkeep helper process exited (code {code}) during {op}",
                hint="its error is printed above; set worker='thread' to register in-process",
            ) from None
        self.last_cpu = cpu
        if status == "error":
            raise _rebuild(payload)
        return payload

    def _stop(self) -> None:
        if self._replies is not None:
            self._replies.close()
            self._replies = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the helper's end-of-input: it exits
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # stuck on an unreachable store: nothing is lost
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the helper (it finishes its request first, if any)."""
        with self._lock:
            self._stop()


# -- the helper's side ---------------------------------------------------------------------------


def _open(spec: Mapping[str, Any]) -> Keep:
    import modelkeep
    from modelkeep.config import load_config
    from modelkeep.hooks.manager import get_plugin_manager

    config = load_config(Path(spec["config_dir"])) if spec.get("config_dir") else None
    keep = modelkeep.open(spec.get("store"), spec.get("registry"),
                          store_options=spec.get("store_options"), config=config,
                          signing_key=spec.get("signing_key"))
    names = sorted(info.name for info in get_plugin_manager().plugins_info())
    if names != spec.get("plugins", names):
        raise errors.PluginError(
            f"the helper process loaded plugins {names}, the training process {spec['plugins']}",
            hint="set worker='thread' to register in the training process",
        )
    return keep


def _serve(keep: Keep | None, op: str, args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> tuple[Keep | None, Any]:
    if op == "open":
        return _open(args[0]), None
    if keep is None:
        raise errors.StoreError("the helper has no open store")
    if op == "register":
        return keep, keep.register(*args, **kwargs)
    if op == "set_alias":
        return keep, keep.set_alias(*args, **kwargs)
    if op == "set_tag":
        keep.registry.set_tag(*args, **kwargs)
        return keep, None
    raise errors.InvalidInputError(f"unknown helper request {op!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(int(argv[0]), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into a reply
    requests = sys.stdin.buffer
    keep: Keep | None = None
    while True:
        try:
            op, args, kwargs = _read(requests)
        except EOFError:
            return 0
        started = time.process_time()
        try:
            keep, result = _serve(keep, op, args, kwargs)
            reply: tuple[str, Any, float] = ("ok", result, 0.0)
        except Exception as exc:
            reply = ("error", _describe(exc), 0.0)
        reply = (reply[0], reply[1], time.process_time() - started)
        try:
            _write(replies, reply)
        except BrokenPipeError:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
