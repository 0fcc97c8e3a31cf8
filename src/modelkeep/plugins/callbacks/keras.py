"""Keras 3: :class:`ModelkeepCheckpoint`, a ``keras.callbacks.ModelCheckpoint`` that also
registers each file it writes (``.keras`` for the whole model and optimizer, or
``.weights.h5``) as the next version of *name*: parent the previous one, the logs (loss,
metrics) as ``metric.*`` tags, and the training step (batches seen) and epoch as tags::

    model.fit(x, y, callbacks=[ModelkeepCheckpoint("mnist", "ckpt/model.keras",
                                                   monitor="val_loss", keep_last=3)])

Resume: ``keep.pull("mnist@latest", "resume")``, then
``keras.saving.load_model("resume/model.keras")`` and ``fit(..., initial_epoch=EPOCH)`` with the
version's ``epoch`` tag. Tested on the torch backend (``KERAS_BACKEND=torch``).

Keras says whether it saved only inside ``ModelCheckpoint``; this subclass wraps the two methods
that decide and save (``_should_save_model``, ``_save_model``; Keras 3.0 to 3.15). Keras rewrites
its file in place, so the subclass moves the old file into the tracker's staging folder just
before each save (the tracker's worker deletes it): every save is a new file, which staging
hard-links instead of copying, and freeing the old file's blocks happens off the training thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modelkeep.errors import MissingExtraError
from modelkeep.plugins.callbacks._common import TrackerOwner, scalar_metrics

try:
    import keras
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("keras", "keras") from exc

if TYPE_CHECKING:
    from modelkeep.keep import Keep


class ModelkeepCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ``ModelCheckpoint``, registering each file it saves as a version of *name*.

    :param name: the model name in the registry.
    :param filepath: where Keras saves (``.keras`` or ``.weights.h5``); placeholders work.
    :param keep: an open :class:`~modelkeep.Keep`; default ``modelkeep.open(store, registry)``.
    :param keep_last: retention: keep the last K checkpoints and the best (by ``monitor``).
    :param tracker_options: further :class:`~modelkeep.training.Tracker` options.
    :param kwargs: ``ModelCheckpoint``'s own arguments (``monitor``, ``mode``, ``save_freq`` …).
    """

    def __init__(
        self,
        name: str,
        filepath: str,
        *,
        keep: Keep | None = None,
        store: str | None = None,
        registry: str | None = None,
        store_options: Mapping[str, Any] | None = None,
        keep_last: int | None = None,
        tracker_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(filepath, **kwargs)
        monitor = kwargs.get("monitor", "val_loss")
        mode = kwargs.get("mode", "auto")
        if mode == "auto":  # Keras' own rule: accuracies and AUCs are maximised
            mode = "max" if any(k in monitor for k in ("acc", "auc", "fmeasure")) else "min"
        options = {"monitor": monitor, "mode": mode, "keep_last": keep_last,
                   "staging": "link", **(tracker_options or {})}
        self.modelkeep = TrackerOwner(name, keep, store, registry, store_options, options)
        self._steps = 0
        self._will_save: tuple[str, int, dict[str, Any]] | None = None

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps += 1
        super().on_train_batch_end(batch, logs)

    def _should_save_model(self, epoch: int, batch: int | None, logs: dict[str, Any],
                           filepath: str) -> bool:
        should = super()._should_save_model(epoch, batch, logs, filepath)
        self._will_save = (filepath, epoch, dict(logs or {})) if should else None
        # Keras rewrites its file in place. Moving the old file away first makes the save a new
        # file, so staging can hard-link it (free) instead of copying it on the training thread;
        # and the worker, not the training thread, frees the old file's blocks (the truncation
        # Keras would do costs milliseconds per save on a large model). A symlink is removed.
        if (should and os.path.lexists(filepath)
                and not self.modelkeep.tracker.discard(filepath)):
            os.unlink(filepath)
        return bool(should)

    def _save_model(self, epoch: int, batch: int | None, logs: dict[str, Any]) -> None:
        self._will_save = None
        super()._save_model(epoch, batch, logs)
        if self._will_save is None:
            return
        filepath, epoch, logs = self._will_save
        self._will_save = None
        self.modelkeep.tracker.checkpoint(
            filepath, step=self._steps, metrics=scalar_metrics(logs),
            # Keras counts epochs from 0 and names files from 1; the tag is the number of
            # finished epochs at an epoch end, i.e. what fit(initial_epoch=...) resumes from.
            tags={"epoch": str(epoch + 1 if batch is None else epoch)}, force=True,
        )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_end(logs)
        self.modelkeep.close()  # upload errors fail model.fit()


__all__ = ["ModelkeepCheckpoint"]
