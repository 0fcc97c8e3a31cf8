"""A Lightning DDP training script on CPU (2 processes, gloo) with the modelkeep callback, run by
tests/test_callbacks.py as a subprocess: Lightning's DDP launcher starts rank 1 by running this
script again.

    python tests/ddp_train.py NAME STORE REGISTRY CKPT_DIR
"""

from __future__ import annotations

import os
import sys

# Every version records who registered it: the rank that did.
os.environ["MODELKEEP_AUTHOR"] = f"rank{os.environ.get('LOCAL_RANK', '0')}@ddp"

import lightning.pytorch as pl
import torch

from modelkeep.plugins.callbacks.lightning import ModelkeepCheckpoint


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(64, 4)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(name: str, store: str, registry: str, ckpt_dir: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 64), torch.randint(0, 4, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    # Store and registry by name: the callback opens them at its first registration, so rank 1,
    # which never registers, never loads a registry adapter.
    callback = ModelkeepCheckpoint(name, store=store, registry=registry, dirpath=ckpt_dir,
                                   every_n_train_steps=1, save_top_k=-1,
                                   tracker_options={"on_full": "block"})
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=2, strategy="ddp",
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=True, callbacks=[callback])
    trainer.fit(Tiny(), loader)
    opened = any(m.startswith("modelkeep.plugins.mlflow.") for m in sys.modules)
    print(f"rank {trainer.global_rank} finished at step {trainer.global_step}; "
          f"registry opened: {opened}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
