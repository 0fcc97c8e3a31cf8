"""Train a tiny Keras 3 model (torch backend) on CPU, registering checkpoints with modelkeep,
then resume from the newest registered version.

    python examples/train_keras.py [WORKDIR]

Store and MLflow registry live in WORKDIR (default: a new temporary folder). Takes seconds.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported

import keras
import numpy as np

import modelkeep
from modelkeep.plugins.callbacks.keras import ModelkeepCheckpoint


def model() -> keras.Model:
    m = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(4)])
    m.compile(optimizer="adam", metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mk-keras-"))
    keep = modelkeep.open(store=str(work / "store"), registry=f"sqlite:///{work / 'mlflow.db'}")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 32)).astype("float32")
    y = x[:, :4].argmax(axis=1)

    # The whole model and optimizer (.keras) after every epoch; "best" follows val_loss.
    callback = ModelkeepCheckpoint("tiny-keras", str(work / "ckpt" / "model.keras"), keep=keep,
                                   monitor="val_loss", keep_last=2,
                                   # every checkpoint; the default skips some under load
                                   tracker_options={"on_full": "block"})
    model().fit(x, y, validation_split=0.25, epochs=4, batch_size=32, verbose=0,
                callbacks=[callback])
    for v in keep.versions("tiny-keras"):
        print(f"{v.ref:16} epoch {v.tags['epoch']}  val_loss "
              f"{float(v.tags['metric.val_loss']):.3f}  aliases {list(v.aliases)}"
              f"  parents {[f'{p.name}@{p.version}' for p in v.parents]}")

    # Resume: load the newest version and train on from the epoch it recorded.
    latest = keep.get("tiny-keras@latest")
    folder = keep.pull(latest.ref, work / "resume")
    restored = keras.saving.load_model(folder / "model.keras")
    history = restored.fit(x, y, validation_split=0.25, epochs=6,
                           initial_epoch=int(latest.tags["epoch"]), batch_size=32, verbose=0)
    print(f"resumed {latest.ref} at epoch {latest.tags['epoch']}: "
          f"{len(history.history['loss'])} more epochs, "
          f"optimizer at step {int(restored.optimizer.iterations)}")


if __name__ == "__main__":
    main()
