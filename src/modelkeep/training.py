"""Checkpoints from training loops: :class:`Tracker`, behind :func:`modelkeep.track` and
``Keep.checkpoint``.

This module owns registering checkpoints without stalling the training loop:

* **Policy.** A :class:`Tracker` registers a checkpoint every *every* steps, or when the
  monitored metric improves (``mode`` ``"min"``/``"max"``), or on every call when neither is set.
  Each registered checkpoint's parent is the previous one, so a run is a chain in the version DAG;
  metrics become ``metric.<name>`` tags and the step a ``step`` tag. When MLflow is already
  imported and a run is active, the version is linked to that run.
* **Background uploads.** The training thread only takes a private copy of the checkpoint
  (*staging*) and queues it; one worker thread per tracker stores and registers checkpoints in
  order. The queue holds at most *max_pending* staged checkpoints, so disk use is bounded by
  ``max_pending + 1`` checkpoints and memory by the store's fixed ingest buffers. When the queue is
  full, ``on_full="skip"`` (the default) drops the newest queued checkpoint that is not the current
  best, so training never waits for the store; ``on_full="block"`` waits instead.
* **Pacing.** Registering is mostly Python (MLflow, SQL, bookkeeping) holding the GIL the training
  thread needs. In ``skip`` mode the worker rests after each upload so its own CPU time stays
  within *cpu_budget* (3%) of wall time (at most 30 s): a tiny model saving every step gets a
  checkpoint registered every few seconds (the newest and the best always), while a large upload,
  which mostly waits on I/O, is not held back. A flush ends the rest at once.
* **Staging.** A training loop usually overwrites its checkpoint on the next save, so the upload
  must never read the file in place. ``staging="copy"`` (the default) copies into a private folder
  beside the checkpoint (same filesystem, so a copy-on-write clone where the filesystem has them,
  and never a RAM-backed temp dir); ``staging="link"`` hard-links instead, which is free but only
  safe for writers that never rewrite a saved file in place (Hugging Face ``Trainer`` writes each
  save to a new ``checkpoint-N`` folder); a file changed under a link is detected and reported.
* **Errors.** Nothing raises in the training loop because of the store: failures are collected
  and raised as one :class:`~modelkeep.errors.CheckpointError` by :meth:`Tracker.flush` (context
  exit, ``close()``, ``Keep.flush()``), or printed at process exit. After *max_failures*
  consecutive failures the tracker stops trying (an unreachable store costs its timeouts a few
  times, not once per step). The store's write order keeps a failed upload invisible: chunks, then
  the snapshot, then the registry entry.
* **Retention.** With *keep_last*, the last K checkpoints and the best one stay; the others get
  the registry tag ``modelkeep.retention=expired``. The aliases *last_alias* and *best_alias* follow
  the newest and the best checkpoint, moved through ``Keep.set_alias`` like any alias: a plugin's
  ``modelkeep_before_alias_change`` may refuse (the alias then stays, the refusal is kept in
  ``Tracker.vetoes`` and warned about at flush), and every move is journaled and in the alias
  history. The tracker deletes nothing: ``prune`` and ``gc`` delete the expired versions (see
  :mod:`modelkeep.policy.retention`) and reclaim their chunks.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import math
import os
import re
import shutil
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelkeep.errors import (
    CheckpointError,
    InvalidInputError,
    ModelkeepError,
    SourceError,
    VetoError,
)
from modelkeep.refs import validate_alias, validate_name

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.ops.results import ModelVersion

RETENTION_TAG = "modelkeep.retention"
METRIC_PREFIX = "metric."
STAGING_PREFIX = ".modelkeep-staging-"
_TAG_KEY_UNSAFE = re.compile(r"[^\w.\- /]")
MAX_REST = 30.0  # seconds: one-off costs (a new registry's schema) must not pause uploads long
_FICLONE = 0x40049409  # Linux ioctl: copy-on-write clone (btrfs, xfs, bcachefs)


def _metric_value(value: Any) -> float | None:
    try:
        out = float(value)  # python/numpy scalars and 0-d tensors
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _format_metric(value: float) -> str:
    return repr(value)


def active_mlflow_run_id() -> str | None:
    """The id of MLflow's active run in this thread, without importing MLflow if the training
    script did not (MLflow's active run is per thread, so ask from the training thread)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return None
    try:
        run = mlflow.active_run()
    except Exception:
        return None
    return run.info.run_id if run is not None else None


# -- staging -----------------------------------------------------------------------------------


def _clone_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    try:
        import fcntl

        with open(src, "rb") as fi, open(dst, "wb") as fo:
            fcntl.ioctl(fo.fileno(), _FICLONE, fi.fileno())
        shutil.copymode(src, dst)
        return
    except (ImportError, OSError):
        pass
    shutil.copy2(src, dst)  # sendfile / copy_file_range on Linux: kernel-side, no Python buffers


def _link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        _clone_or_copy(src, dst)


def _stat_key(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def stage(src: Path, dest: Path, mode: Literal["copy", "link"]) -> dict[str, tuple[int, int, int]]:
    """Copy or link the file or folder *src* into the empty folder *dest*, made if missing (a
    file keeps its name).

    Returns each staged file's path and (inode, size, mtime), so a link can be checked after the
    upload. This runs on the training thread for every checkpoint, so it walks with
    ``os.scandir`` and plain strings (a ``Trainer`` checkpoint is about ten files).
    """
    put = _clone_or_copy if mode == "copy" else _link_or_copy
    if not os.path.isdir(dest):
        os.makedirs(dest)
    seen: dict[str, tuple[int, int, int]] = {}
    if src.is_file():
        target = os.path.join(dest, src.name)
        put(src, target)
        seen[target] = _stat_key(target)
        return seen
    if not src.is_dir():
        raise SourceError(f"checkpoint {str(src)!r} does not exist",
                          hint="save the checkpoint before registering it")

    def walk(folder: str, into: str) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            target = os.path.join(into, entry.name)
            if entry.is_dir():  # follows a link: a linked folder is copied, as scan_local reads it
                if entry.is_symlink():
                    shutil.copytree(os.path.realpath(entry.path), target)
                    continue
                os.mkdir(target)
                walk(entry.path, target)
            elif entry.is_symlink():
                # Followed, as scan_local would; a private copy keeps the link target stable too.
                _clone_or_copy(os.path.realpath(entry.path), target)
                seen[target] = _stat_key(target)
            else:
                put(entry.path, target)
                seen[target] = _stat_key(target)

    walk(os.fspath(src), os.fspath(dest))
    return seen


# -- pending checkpoints -----------------------------------------------------------------------


class VetoWarning(UserWarning):
    """A plugin refused to move a tracker's ``last`` or ``best`` alias (the version itself was
    registered)."""


class PendingCheckpoint:
    """One checkpoint handed to a tracker; resolves to its :class:`ModelVersion`, or to None when
    it was skipped (queue full, or the tracker stopped after repeated failures)."""

    def __init__(self, step: int | None, metrics: Mapping[str, float], tags: Mapping[str, str],
                 run_id: str | None, is_best: bool) -> None:
        self.step = step
        self.metrics = dict(metrics)
        self.tags = dict(tags)
        self.run_id = run_id
        self.is_best = is_best
        self.staged: Path | None = None
        self.stats: dict[str, tuple[int, int, int]] = {}
        self.skipped_reason: str | None = None
        self._done = threading.Event()
        self._version: ModelVersion | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = ("pending" if not self._done.is_set() else "failed" if self._error
                 else "skipped" if self.skipped_reason else f"registered {self._version!r}")
        return f"<PendingCheckpoint step={self.step} {state}>"

    def done(self) -> bool:
        return self._done.is_set()

    @property
    def skipped(self) -> bool:
        return self.skipped_reason is not None

    def result(self, timeout: float | None = None) -> ModelVersion | None:
        """The registered version (None if skipped); raises the upload's error."""
        if not self._done.wait(timeout):
            raise CheckpointError(f"checkpoint at step {self.step} is still uploading",
                                  hint="wait longer, or check the store")
        if self._error is not None:
            raise self._error
        return self._version

    def _finish(self, version: ModelVersion | None = None, error: BaseException | None = None,
                skipped: str | None = None) -> None:
        self._version, self._error, self.skipped_reason = version, error, skipped
        self._done.set()


# -- the tracker -------------------------------------------------------------------------------


@dataclass
class _Stats:
    requested: int = 0
    queued: int = 0
    registered: int = 0
    skipped: int = 0
    failed: int = 0
    upload_seconds: list[float] = field(default_factory=list)


_live: weakref.WeakSet[Tracker] = weakref.WeakSet()


class Tracker:
    """Registers a training run's checkpoints as a chain of versions of one model.

    Use it through :func:`modelkeep.track` (a context manager) or ``Keep.checkpoint``; the
    module docstring describes the policy, staging, errors and retention.
    """

    def __init__(
        self,
        keep: Keep,
        name: str,
        *,
        every: int | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        keep_last: int | None = None,
        parent: str | None = None,
        tags: Mapping[str, str] | None = None,
        last_alias: str | None = "last",
        best_alias: str | None = "best",
        max_pending: int = 2,
        on_full: Literal["skip", "block"] = "skip",
        staging: Literal["copy", "link"] = "copy",
        staging_dir: str | os.PathLike[str] | None = None,
        flush_timeout: float | None = None,
        max_failures: int = 3,
        cpu_budget: float | None = 0.03,
    ) -> None:
        validate_name(name)
        if every is not None and every < 1:
            raise InvalidInputError(f"every must be a positive number of steps, not {every}")
        if mode not in ("min", "max"):
            raise InvalidInputError(f"mode must be 'min' or 'max', not {mode!r}")
        if keep_last is not None and keep_last < 1:
            raise InvalidInputError(f"keep_last must be at least 1, not {keep_last}")
        if max_pending < 1:
            raise InvalidInputError(f"max_pending must be at least 1, not {max_pending}")
        if on_full not in ("skip", "block"):
            raise InvalidInputError(f"on_full must be 'skip' or 'block', not {on_full!r}")
        if cpu_budget is not None and not 0 < cpu_budget <= 1:
            raise InvalidInputError(f"cpu_budget must be in (0, 1], not {cpu_budget}")
        if staging not in ("copy", "link"):
            raise InvalidInputError(f"staging must be 'copy' or 'link', not {staging!r}")
        self.keep = keep
        self.name = name
        self.every = every
        self.monitor = monitor
        self.mode = mode
        self.keep_last = keep_last
        self.tags = dict(tags or {})
        self.last_alias = validate_alias(last_alias) if last_alias else None
        self.best_alias = validate_alias(best_alias) if best_alias and monitor else None
        self.max_pending = max_pending
        self.on_full = on_full
        self.staging = staging
        self.staging_dir = Path(staging_dir) if staging_dir is not None else None
        self.flush_timeout = flush_timeout
        self.max_failures = max_failures
        self.cpu_budget = cpu_budget
        self.stats = _Stats()
        self.versions: list[ModelVersion] = []
        # (version ref, alias, error) of every alias move a plugin refused, oldest first.
        self.vetoes: list[tuple[str, str, VetoError]] = []
        self.closed = False

        self._parent = parent  # ref of the previous registered checkpoint
        self._calls = 0
        self._best: float | None = None  # best monitored value among queued checkpoints
        self._best_item: PendingCheckpoint | None = None
        self._cond = threading.Condition()
        self._queue: deque[PendingCheckpoint] = deque()
        self._reserved = 0  # slots taken by checkpoints being staged
        self._busy = False  # the worker holds a checkpoint
        self._unreported: list[tuple[int | None, BaseException]] = []
        self._unwarned: list[tuple[str, str, VetoError]] = []
        self._consecutive_failures = 0
        self._stopped_by: BaseException | None = None
        self._staging_roots: set[Path] = set()
        self._chain: list[tuple[int, float | None]] = []  # (version, monitored value)
        self._expired: set[int] = set()
        self._best_version: tuple[int, float] | None = None
        self._worker: threading.Thread | None = None
        self._trash: list[Path] = []  # staged folders of skipped checkpoints, for the worker
        self._free_slots: list[Path] = []  # empty staging folders, ready for the next checkpoint
        self._rest_until = 0.0  # the worker's pacing: no new upload before this (monotonic)
        self._flushing = 0
        self._idle = False  # the worker waits for an empty queue to fill
        _live.add(self)

    def __repr__(self) -> str:
        return f"Tracker({self.name!r}, registered={self.stats.registered})"

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            self.close()
        except CheckpointError as flush_error:
            if exc is None:
                raise
            # The training error is the one to see; the upload failure rides along as a note.
            exc.add_note(f"modelkeep: {flush_error}")

    # -- policy --------------------------------------------------------------------------------

    def _improves(self, value: float | None) -> bool:
        if value is None:
            return False
        if self._best is None:
            return True
        return value < self._best if self.mode == "min" else value > self._best

    def due(self, step: int | None = None, metrics: Mapping[str, Any] | None = None) -> bool:
        """Whether :meth:`checkpoint` would register at *step* with *metrics*: call it before
        saving, to save only when the checkpoint will be kept."""
        return self._due(step if step is not None else self._calls + 1, metrics)

    def _due(self, step: int, metrics: Mapping[str, Any] | None) -> bool:
        if self.every is None and self.monitor is None:
            return True
        if self.every is not None and step % self.every == 0:
            return True
        if self.monitor is not None:
            return self._improves(_metric_value((metrics or {}).get(self.monitor)))
        return False

    # -- the training thread's side ------------------------------------------------------------

    def checkpoint(
        self,
        path: str | os.PathLike[str],
        *,
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        force: bool = False,
    ) -> PendingCheckpoint | None:
        """Queue the checkpoint at *path* if the policy says so (always with *force*).

        Returns None when the policy skips this step, else a :class:`PendingCheckpoint`. Only the
        staging copy happens here; upload and registration run on the worker thread.
        """
        if self.closed:
            raise CheckpointError(f"tracker for {self.name!r} is closed",
                                  hint="open a new one with modelkeep.track()")
        self._calls += 1
        counted = step if step is not None else self._calls
        if not force and not self._due(counted, metrics):
            return None
        self.stats.requested += 1
        values = {str(k): v for k, v in (metrics or {}).items()}
        numeric = {k: x for k, x in ((k, _metric_value(v)) for k, v in values.items())
                   if x is not None}
        monitored = numeric.get(self.monitor) if self.monitor else None
        is_best = self._improves(monitored)
        item_tags = {**self.tags, **{str(k): str(v) for k, v in (tags or {}).items()}}
        item = PendingCheckpoint(step, numeric, item_tags, active_mlflow_run_id(), is_best)

        with self._cond:
            if self._stopped_by is not None:
                return self._skip(item, f"stopped after {self.max_failures} failures")
            if not self._make_room(item):
                return self._skip(item, "upload queue full")
            self._reserved += 1
        try:
            item.staged = self._take_slot(Path(path))
            item.stats = stage(Path(path), item.staged, self.staging)
        except BaseException:
            with self._cond:
                self._reserved -= 1
                self._cond.notify_all()
            self._cleanup(item)
            raise
        with self._cond:
            self._reserved -= 1
            if is_best:
                self._best, self._best_item = monitored, item
            self._queue.append(item)
            self.stats.queued += 1
            self._ensure_worker()
            if self._idle:  # a resting worker wakes on its own when its rest ends
                self._cond.notify_all()
        return item

    def _make_room(self, item: PendingCheckpoint) -> bool:
        """Under the lock: wait or drop until a slot is free; False to skip *item* itself."""
        while len(self._queue) + self._reserved >= self.max_pending:
            if self.on_full == "block":
                self._cond.wait(1.0)
                if self._stopped_by is not None:
                    return False
                continue
            # Drop the newest queued checkpoint that is not the best: the new one supersedes it
            # as "last", and the best must survive for retention.
            for victim in reversed(self._queue):
                if victim is not self._best_item or item.is_best:
                    self._queue.remove(victim)
                    self._skip(victim, "superseded by a newer checkpoint while queued")
                    break
            else:
                return False
        return True

    def _skip(self, item: PendingCheckpoint, reason: str) -> PendingCheckpoint:
        """Under the lock. Deleting a staged folder takes milliseconds (rmdir on a journaling
        filesystem), so the worker does it, not the training thread."""
        self.stats.skipped += 1
        if item.staged is not None:
            # No wake-up: the worker empties the trash before its next upload, and waking a
            # resting worker costs the training thread a GIL hand-over.
            self._trash.append(item.staged)
        item._finish(skipped=reason)
        return item

    def _take_slot(self, path: Path) -> Path:
        """An empty staging folder: a recycled one when there is one, since creating a folder
        can take milliseconds (journaling filesystems) that the training thread should not pay.

        Staging lives beside the checkpoint: the same filesystem (links and clones work, the copy
        stays on disk) and never a RAM-backed /tmp. Removed when the tracker closes.
        """
        base = self.staging_dir or Path(os.path.dirname(os.path.abspath(path)))
        root = base / f"{STAGING_PREFIX}{os.getpid()}-{id(self):x}"
        with self._cond:
            self._staging_roots.add(root)
            for i, slot in enumerate(self._free_slots):
                if slot.parent == root:
                    return self._free_slots.pop(i)
        return root / uuid.uuid4().hex[:12]

    def discard(self, path: str | os.PathLike[str]) -> bool:
        """Move the file at *path*, which the training loop is about to replace, out of its way
        for the worker to delete; returns False if there is no such file.

        Deleting a large file frees its blocks, which takes milliseconds; a writer that rewrites
        its checkpoint in place (Keras) pays that on the training thread. A rename into the
        staging folder (same filesystem) is one metadata update, and the worker frees the blocks.
        The next save then writes a new file, which staging can hard-link.
        """
        src = Path(path)
        if not src.is_file() or src.is_symlink():
            return False
        base = self.staging_dir or Path(os.path.dirname(os.path.abspath(src)))
        root = base / f"{STAGING_PREFIX}{os.getpid()}-{id(self):x}"
        target = root / f"discarded-{uuid.uuid4().hex[:12]}"
        with self._cond:
            self._staging_roots.add(root)
        try:
            os.rename(src, target)
        except FileNotFoundError:
            root.mkdir(parents=True, exist_ok=True)  # the first time only
            os.rename(src, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # a staging_dir on another filesystem: delete here
                raise
            os.unlink(src)
            return True
        with self._cond:
            # No wake-up: the worker empties the trash before its next upload.
            self._trash.append(target)
        return True

    def _recycle(self, folder: Path) -> None:
        """On the worker: empty a used staging folder and keep it (and a few spares) for reuse;
        delete a discarded file."""
        if not folder.is_dir():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder)
            return
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            return
        with self._cond:
            want = self.max_pending + 1
            if len(self._free_slots) >= want or self.closed:
                keep_it = False
            else:
                self._free_slots.append(folder)
                keep_it = True
            spares = max(0, want - len(self._free_slots))
        if not keep_it:
            shutil.rmtree(folder, ignore_errors=True)
            return
        made = []
        for _ in range(spares):
            spare = folder.parent / uuid.uuid4().hex[:12]
            with contextlib.suppress(OSError):
                spare.mkdir()
                made.append(spare)
        with self._cond:
            self._free_slots.extend(made)

    @staticmethod
    def _cleanup(item: PendingCheckpoint) -> None:
        if item.staged is not None:
            shutil.rmtree(item.staged, ignore_errors=True)

    # -- the worker ----------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            # A daemon, so a store that never answers cannot keep the process alive; pending
            # work is flushed (with a timeout) by the atexit hook instead.
            self._worker = threading.Thread(target=self._run, name=f"modelkeep-{self.name}",
                                            daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._trash:
                        trash, self._trash = self._trash, []
                        self._cond.release()
                        try:
                            for folder in trash:
                                self._recycle(folder)
                        finally:
                            self._cond.acquire()
                        continue
                    if not self._queue:
                        if self.closed:
                            return
                        self._idle = True
                        self._cond.wait()
                        self._idle = False
                        continue
                    rest = self._rest_until - time.monotonic()
                    if rest <= 0 or self._flushing or self.closed:
                        break
                    # Pacing: newer checkpoints may replace queued ones meanwhile (on_full);
                    # wake now and then to recycle their staging folders.
                    self._cond.wait(min(rest, 0.25))
                item = self._queue.popleft()
                self._busy = True
                self._cond.notify_all()
                stopped = self._stopped_by is not None
            try:
                if stopped:
                    with self._cond:
                        self.stats.skipped += 1
                    item._finish(skipped=f"stopped after {self.max_failures} failures")
                else:
                    self._upload(item)
            finally:
                if item.staged is not None:
                    self._recycle(item.staged)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _upload(self, item: PendingCheckpoint) -> None:
        assert item.staged is not None
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            self._register(item)
        finally:
            if self.cpu_budget is not None and self.on_full == "skip":
                # Registering is mostly Python (MLflow, SQL, bookkeeping) that holds the GIL the
                # training thread needs. Rest so this thread's CPU time stays within the budget
                # of wall time: a tiny model saving every step sees a checkpoint registered every
                # few seconds; a large upload, which waits on I/O, is never slowed down.
                cpu = time.thread_time() - cpu_started
                wall = time.perf_counter() - started
                rest = min(MAX_REST, max(0.0, cpu / self.cpu_budget - wall))
                self._rest_until = time.monotonic() + rest

    def _register(self, item: PendingCheckpoint) -> None:
        assert item.staged is not None
        started = time.perf_counter()
        tags = dict(item.tags)
        if item.step is not None:
            tags["step"] = str(item.step)
        for key, value in item.metrics.items():
            tags[METRIC_PREFIX + _TAG_KEY_UNSAFE.sub("_", key)] = _format_metric(value)
        message = f"checkpoint at step {item.step}" if item.step is not None else "checkpoint"
        try:
            version = self.keep.register(
                self.name, item.staged, parents=[self._parent] if self._parent else [],
                tags=tags, message=message, run_id=item.run_id,
            )
            changed = [p for p, key in item.stats.items() if _stat_key(p) != key]
            if changed:
                self.keep.registry.set_tag(self.name, version.version, RETENTION_TAG, "expired")
                raise CheckpointError(
                    f"{os.path.basename(changed[0])!r} changed while "
                    f"{self.name}@{version.version} was uploading; that version is marked "
                    "expired",
                    hint="use staging='copy' for checkpoints rewritten in place",
                )
            if not version.reused:
                self._retain(version, item.metrics.get(self.monitor) if self.monitor else None)
        except Exception as exc:
            with self._cond:
                self.stats.failed += 1
                self._consecutive_failures += 1
                self._unreported.append((item.step, exc))
                if self._consecutive_failures >= self.max_failures:
                    self._stopped_by = exc
            item._finish(error=exc)
            return
        with self._cond:
            self._consecutive_failures = 0
            self.stats.registered += 1
            self.stats.upload_seconds.append(time.perf_counter() - started)
            if not version.reused:
                self.versions.append(version)
                self._parent = version.ref
        item._finish(version)

    def _retain(self, version: ModelVersion, value: float | None) -> None:
        """Move the aliases and mark versions outside the keep set (registry side only)."""
        registry = self.keep.registry
        self._chain.append((version.version, value))
        if self.last_alias:
            self._set_alias(version, self.last_alias)
        if value is not None and self.monitor:
            best = self._best_version
            if best is None or (value < best[1] if self.mode == "min" else value > best[1]):
                self._best_version = (version.version, value)
                if self.best_alias:
                    self._set_alias(version, self.best_alias)
        if self.keep_last is None:
            return
        keep = {v for v, _ in self._chain[-self.keep_last:]}
        if self._best_version is not None:
            keep.add(self._best_version[0])
        for number, _value in self._chain:
            if number not in keep and number not in self._expired:
                registry.set_tag(self.name, number, RETENTION_TAG, "expired")
                self._expired.add(number)

    def _set_alias(self, version: ModelVersion, alias: str) -> None:
        """Through ``Keep.set_alias``, like any alias change: the plugins' alias checks (a
        promotion gate) apply, and the change is journaled and kept in the alias history.

        A refusal is the plugin's decision, not an upload failure: the version stays registered,
        the alias stays where it was, and the refusal is kept in :attr:`vetoes` and reported as a
        warning at flush (it does not count towards *max_failures*, nor fail training).
        """
        try:
            self.keep.set_alias(version, alias)
        except VetoError as exc:
            with self._cond:
                self.vetoes.append((version.ref, alias, exc))
                self._unwarned.append((version.ref, alias, exc))

    # -- flushing ------------------------------------------------------------------------------

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._reserved + (1 if self._busy else 0)

    def flush(self, timeout: float | None = None) -> list[ModelVersion]:
        """Wait until every queued checkpoint is registered; return the versions so far.

        Raises :class:`~modelkeep.errors.CheckpointError` for failures not reported before, or
        when *timeout* (default: the tracker's *flush_timeout*) passes first.
        """
        timeout = self.flush_timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
        try:
            return self._wait_all(timeout, deadline)
        finally:
            with self._cond:
                self._flushing -= 1

    def _wait_all(self, timeout: float | None, deadline: float | None) -> list[ModelVersion]:
        with self._cond:
            while self._queue or self._reserved or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    waiting = len(self._queue) + (1 if self._busy else 0)
                    raise CheckpointError(
                        f"{waiting} checkpoint(s) of {self.name!r} still uploading after "
                        f"{timeout:g}s",
                        hint="the store is slow or unreachable; nothing partial was registered",
                    )
                self._cond.wait(left if left is not None else 1.0)
            failures, self._unreported = tuple(self._unreported), []
            refused, self._unwarned = self._unwarned, []
        if refused:
            ref, alias, exc = refused[-1]
            more = f" (and {len(refused) - 1} earlier refusal(s))" if len(refused) > 1 else ""
            warnings.warn(f"modelkeep: alias {alias!r} was not moved to {ref}: {exc.message}"
                          f"{more}; the versions are registered", VetoWarning, stacklevel=3)
        if failures:
            first = failures[0][1]
            steps = ", ".join(str(s) for s, _ in failures[:5] if s is not None)
            where = f" (steps {steps}{', …' if len(failures) > 5 else ''})" if steps else ""
            message = first.message if isinstance(first, ModelkeepError) else str(first)
            hint = first.hint if isinstance(first, ModelkeepError) else None
            raise CheckpointError(
                f"{len(failures)} checkpoint(s) of {self.name!r} were not registered{where}: "
                f"{message}", hint=hint, failures=failures,
            ) from first
        return list(self.versions)

    def close(self, timeout: float | None = None) -> list[ModelVersion]:
        """Flush, stop the worker and remove the staging folders."""
        if self.closed:
            return list(self.versions)
        try:
            return self.flush(timeout)
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()
            for root in self._staging_roots:
                with contextlib.suppress(OSError):
                    shutil.rmtree(root)
            _live.discard(self)


def _flush_at_exit() -> None:
    # A script that never closed its tracker still gets its checkpoints registered, and hears
    # about failures; an exception here would only print a traceback, so print one line.
    for tracker in list(_live):
        try:
            tracker.close(tracker.flush_timeout if tracker.flush_timeout is not None else 300.0)
        except ModelkeepError as exc:
            print(f"modelkeep: {exc}", file=sys.stderr)
        except Exception as exc:  # never let one tracker stop the others from flushing
            print(f"modelkeep: flushing {tracker.name!r} failed: {exc!r}", file=sys.stderr)


def _register_exit_hook() -> None:
    # Uploads use thread pools, and concurrent.futures refuses new work once its own exit hook
    # ran; that hook runs in threading's shutdown, before atexit. Threading's exit hooks run in
    # reverse order of registration, so registering after concurrent.futures (imported first)
    # flushes while pools still work. atexit is the fallback where that hook does not exist.
    import concurrent.futures.thread  # noqa: F401  (registers its hook first)

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_flush_at_exit)
    else:
        atexit.register(_flush_at_exit)


_register_exit_hook()

__all__ = ["PendingCheckpoint", "Tracker", "VetoWarning", "active_mlflow_run_id", "stage"]
