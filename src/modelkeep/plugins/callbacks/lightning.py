"""PyTorch Lightning: :class:`ModelkeepCheckpoint`, a ``ModelCheckpoint`` that also registers.

Use it in place of Lightning's ``ModelCheckpoint`` (every option of it works: ``monitor``,
``every_n_train_steps``, ``save_top_k`` …); each checkpoint file it writes becomes the next
version of *name*, its parent the previous one, ``trainer.callback_metrics`` as ``metric.*``
tags and the global step and epoch as ``step``/``epoch`` tags::

    trainer = Trainer(callbacks=[ModelkeepCheckpoint("mnist", monitor="val_loss",
                                                     every_n_train_steps=100, keep_last=3)])

Resume from the newest version::

    folder = keep.pull("mnist@latest", "resume")
    trainer.fit(model, ckpt_path=checkpoint_file(folder))

Lightning has no public hook that runs after a checkpoint file is written, so this subclass
overrides ``ModelCheckpoint._save_checkpoint`` (stable from Lightning 2.0 to 2.6): the file is
complete when the override hands it over. Only global rank zero registers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep.errors import MissingExtraError, NotFoundError
from modelkeep.plugins.callbacks._common import TrackerOwner, scalar_metrics

try:
    from lightning.pytorch.callbacks import ModelCheckpoint
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("lightning", "lightning") from exc

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from modelkeep.keep import Keep


class ModelkeepCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, registering each file it saves as a version of *name*.

    :param name: the model name in the registry.
    :param keep: an open :class:`~modelkeep.Keep`; default ``modelkeep.open(store, registry)``.
    :param keep_last: retention: keep the last K checkpoints and the best (by ``monitor``),
        tag the others ``modelkeep.retention=expired``.
    :param tracker_options: further :class:`~modelkeep.training.Tracker` options
        (``max_pending``, ``on_full``, ``parent``, ``tags`` …).
    :param kwargs: ``ModelCheckpoint``'s own arguments.
    """

    def __init__(
        self,
        name: str,
        *,
        keep: Keep | None = None,
        store: str | None = None,
        registry: str | None = None,
        store_options: Mapping[str, Any] | None = None,
        keep_last: int | None = None,
        tracker_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Lightning writes each checkpoint to a temporary file and moves it into place (an
        # fsspec transaction), never rewriting a saved file: hard links are safe and free.
        options = {"monitor": self.monitor, "mode": self.mode, "keep_last": keep_last,
                   "staging": "link", **(tracker_options or {})}
        self.modelkeep = TrackerOwner(name, keep, store, registry, store_options, options)
        self._registered_step: int | None = None

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        # save_last writes a second file for the same step; one version per step is enough.
        if not trainer.is_global_zero or self._registered_step == trainer.global_step:
            return
        self._registered_step = trainer.global_step
        self.modelkeep.tracker.checkpoint(
            filepath, step=trainer.global_step, metrics=scalar_metrics(trainer.callback_metrics),
            tags={"epoch": str(trainer.current_epoch)}, force=True,
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # Flush here, so an upload failure fails `trainer.fit` instead of passing unseen.
        if trainer.is_global_zero:
            self.modelkeep.close()


def checkpoint_file(folder: str | os.PathLike[str]) -> Path:
    """The ``.ckpt`` file in a pulled version's folder, for ``trainer.fit(ckpt_path=...)``."""
    found = sorted(Path(folder).glob("*.ckpt"))
    if len(found) != 1:
        raise NotFoundError(f"expected one .ckpt file in {str(folder)!r}, found {len(found)}",
                            hint="pull a version registered by ModelkeepCheckpoint")
    return found[0]


__all__ = ["ModelkeepCheckpoint", "checkpoint_file"]
