"""Train a tiny PyTorch Lightning model on CPU, registering checkpoints with modelkeep, then
resume from the newest registered version.

    python examples/train_lightning.py [WORKDIR]

Store and MLflow registry live in WORKDIR (default: a new temporary folder). Takes seconds.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch

import modelkeep
from modelkeep.plugins.callbacks.lightning import ModelkeepCheckpoint, checkpoint_file

# Register every checkpoint, waiting for the store if it falls behind. The default ("skip")
# never slows training: when checkpoints come faster than they can be registered, queued ones
# that are neither the newest nor the best are skipped.
EVERY_ONE = {"on_full": "block"}


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                       torch.nn.Linear(64, 4))

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=g)
    y = (x[:, :4].argmax(dim=1))  # a learnable rule
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def trainer(work: Path, max_steps: int, callback: ModelkeepCheckpoint) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=work, callbacks=[callback])


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mk-pl-"))
    keep = modelkeep.open(store=str(work / "store"), registry=f"sqlite:///{work / 'mlflow.db'}")
    torch.manual_seed(0)

    # A checkpoint every 5 steps (save_top_k=-1: Lightning keeps them all, not only improvements);
    # the best by train_loss gets the alias "best"; only the last 2 and the best stay unexpired.
    callback = ModelkeepCheckpoint("tiny-lightning", keep=keep, dirpath=work / "ckpt",
                                   every_n_train_steps=5, monitor="train_loss", save_top_k=-1,
                                   keep_last=2,
                                   tracker_options=EVERY_ONE)
    trainer(work, 20, callback).fit(Tiny(), data())
    for v in keep.versions("tiny-lightning"):
        print(f"{v.ref:20} step {v.tags['step']:>3}  loss {float(v.tags['metric.train_loss']):.3f}"
              f"  parents {[f'{p.name}@{p.version}' for p in v.parents]}  aliases {list(v.aliases)}"
              f"  added {v.bytes_added}/{v.size} B  {v.tags.get('modelkeep.retention', '')}")

    # Resume: the newest version, pulled, is a checkpoint Lightning continues from.
    folder = keep.pull("tiny-lightning@latest", work / "resume")
    latest = keep.get("tiny-lightning@latest")
    again = ModelkeepCheckpoint("tiny-lightning", keep=keep, dirpath=work / "ckpt2",
                                every_n_train_steps=5, monitor="train_loss", save_top_k=-1,
                                keep_last=2,
                                tracker_options={**EVERY_ONE, "parent": latest.ref})
    resumed = trainer(work, 30, again)
    resumed.fit(Tiny(), data(), ckpt_path=checkpoint_file(folder))
    print(f"resumed from {latest.ref} (step {latest.tags['step']}) to step {resumed.global_step};"
          f" now {keep.get('tiny-lightning@latest').ref}")


if __name__ == "__main__":
    main()
