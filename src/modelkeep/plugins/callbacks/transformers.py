"""Hugging Face Transformers: :class:`ModelkeepCallback`, registering each ``checkpoint-N``
folder the ``Trainer`` saves (weights, optimizer, scheduler, RNG and trainer state) as the next
version of *name*: parent the previous one, the latest logged values (loss, eval metrics) as
``metric.*`` tags, the global step and epoch as tags::

    trainer = Trainer(..., callbacks=[ModelkeepCallback("tiny-bert", keep_last=3)])

Resume: ``keep.pull("tiny-bert@latest", "resume")`` then
``trainer.train(resume_from_checkpoint="resume")``.

The ``Trainer`` writes every save to a new folder and only ever deletes old ones
(``save_total_limit``), so staging hard-links the files by default (free, and the links survive
the rotation); a file rewritten in place is still detected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep.errors import MissingExtraError
from modelkeep.plugins.callbacks._common import TrackerOwner, scalar_metrics

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("transformers", "transformers") from exc

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from modelkeep.keep import Keep

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


class ModelkeepCallback(TrainerCallback):
    """Registers every checkpoint the ``Trainer`` saves as a version of *name*.

    :param monitor: metric for the ``best`` alias and retention; default the training
        arguments' ``metric_for_best_model`` (as logged, e.g. ``eval_loss``).
    :param keep_last: retention: keep the last K checkpoints and the best.
    :param tracker_options: further :class:`~modelkeep.training.Tracker` options.
    """

    def __init__(
        self,
        name: str,
        *,
        keep: Keep | None = None,
        store: str | None = None,
        registry: str | None = None,
        store_options: Mapping[str, Any] | None = None,
        monitor: str | None = None,
        mode: str | None = None,
        keep_last: int | None = None,
        tracker_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self._open = (keep, store, registry, store_options)
        self._monitor, self._mode, self._keep_last = monitor, mode, keep_last
        self._tracker_options = dict(tracker_options or {})
        self.modelkeep: TrackerOwner | None = None
        self._logged: dict[str, Any] = {}
        self._log_read = 0  # entries of state.log_history already merged into _logged

    def _owner(self, args: TrainingArguments) -> TrackerOwner:
        if self.modelkeep is None:
            monitor, mode = self._monitor, self._mode
            if monitor is None and args.metric_for_best_model:
                monitor = args.metric_for_best_model
                if not monitor.startswith("eval_"):
                    monitor = f"eval_{monitor}"
                if mode is None:
                    mode = "max" if args.greater_is_better else "min"
            options = {"monitor": monitor, "mode": mode or "min", "keep_last": self._keep_last,
                       "staging": "link", **self._tracker_options}
            self.modelkeep = TrackerOwner(self.name, *self._open, options)
        return self.modelkeep

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        self._logged, self._log_read = {}, 0  # a resumed run brings its own history

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        # Transformers sets output_dir in __post_init__ (default "trainer_output").
        output = Path(args.output_dir or "trainer_output")
        folder = output / f"{CHECKPOINT_PREFIX}-{state.global_step}"
        # The newest value of each logged key: training loss, learning rate, eval metrics. Only
        # the entries added since the last save are read (the history grows by one per log).
        history = state.log_history
        if len(history) < self._log_read:  # a TrainerState replaced without on_train_begin
            self._logged, self._log_read = {}, 0
        for entry in history[self._log_read:]:
            self._logged.update(entry)
        self._log_read = len(history)
        metrics = scalar_metrics({k: v for k, v in self._logged.items()
                                  if k not in ("step", "epoch")})
        tags = {"epoch": f"{state.epoch:g}"} if state.epoch is not None else {}
        self._owner(args).tracker.checkpoint(folder, step=state.global_step, metrics=metrics,
                                             tags=tags, force=True)

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        if self.modelkeep is not None and state.is_world_process_zero:
            self.modelkeep.close()  # upload errors fail trainer.train()


__all__ = ["ModelkeepCallback"]
