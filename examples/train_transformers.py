"""Train a tiny, randomly initialised GPT-2 (built from a config: nothing is downloaded) with the
Hugging Face Trainer on CPU, registering each saved checkpoint with modelkeep, then resume from
the newest registered version.

    python examples/train_transformers.py [WORKDIR]

Store and MLflow registry live in WORKDIR (default: a new temporary folder). Takes seconds.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a tiny model from a config; never a download

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import modelkeep
from modelkeep.plugins.callbacks.transformers import ModelkeepCallback


class Tokens(torch.utils.data.Dataset):
    """Random token sequences with a repeating pattern the model can learn."""

    def __init__(self, n: int = 64, length: int = 32, vocab: int = 512) -> None:
        g = torch.Generator().manual_seed(0)
        starts = torch.randint(0, vocab - length, (n, 1), generator=g)
        self.ids = (starts + torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer(work: Path, max_steps: int, callbacks: list) -> Trainer:  # type: ignore[type-arg]
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    args = TrainingArguments(output_dir=str(work / "out"), max_steps=max_steps, save_steps=5,
                             save_total_limit=2, logging_steps=5, per_device_train_batch_size=8,
                             learning_rate=1e-3, report_to=[], use_cpu=True, disable_tqdm=True,
                             log_level="error")
    return Trainer(model=GPT2LMHeadModel(config), args=args, train_dataset=Tokens(),
                   callbacks=callbacks)


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mk-hf-"))
    keep = modelkeep.open(store=str(work / "store"), registry=f"sqlite:///{work / 'mlflow.db'}")

    # Every Trainer save (checkpoint-N folder: weights, optimizer, trainer state) is a version.
    # on_full="block": every checkpoint, waiting for the store if it falls behind (the default
    # never slows training and skips queued checkpoints that are neither newest nor best).
    trainer(work, 20, [ModelkeepCallback("tiny-gpt2", keep=keep, monitor="loss", keep_last=2,
                                         tracker_options={"on_full": "block"})]).train()
    for v in keep.versions("tiny-gpt2"):
        print(f"{v.ref:14} step {v.tags['step']:>3}  loss {float(v.tags['metric.loss']):.3f}"
              f"  added {v.bytes_added}/{v.size} B  aliases {list(v.aliases)}")

    # Resume: the pulled folder is a checkpoint the Trainer continues from.
    latest = keep.get("tiny-gpt2@latest")
    folder = keep.pull(latest.ref, work / "resume")
    resumed = trainer(work, 30, [ModelkeepCallback(
        "tiny-gpt2", keep=keep, monitor="loss", keep_last=2,
        tracker_options={"on_full": "block", "parent": latest.ref})])
    resumed.train(resume_from_checkpoint=str(folder))
    print(f"resumed {latest.ref} at step {latest.tags['step']} to step "
          f"{resumed.state.global_step}; now {keep.get('tiny-gpt2@latest').ref}")


if __name__ == "__main__":
    main()
