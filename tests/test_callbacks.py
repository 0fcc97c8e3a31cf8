"""Framework callbacks: tiny real training runs on CPU with Lightning, Keras 3 (torch backend)
and Hugging Face Transformers; versions, parents, tags, dedup, and resuming from a pull."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import modelkeep
from modelkeep.api import ModelVersion
from modelkeep.errors import CheckpointError
from modelkeep.hooks import make_plugin_manager
from tests.backends import unique_name
from tests.helpers import example_approval_plugin
from tests.test_training import _unreachable_s3

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def keep(tmp_path: Path, mlflow_sqlite_uri: str) -> modelkeep.Keep:
    return modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)


def _assert_chain(versions: list[ModelVersion], steps: list[int]) -> None:
    assert [int(v.tags["step"]) for v in versions] == steps
    assert versions[0].parents == ()
    for prev, cur in itertools.pairwise(versions):
        assert [(p.name, p.version) for p in cur.parents] == [(prev.name, prev.version)]
    assert "last" in versions[-1].aliases
    # Frozen weights are stored once: each later checkpoint adds much less than its size.
    for v in versions[1:]:
        assert v.bytes_added is not None and v.bytes_added < v.size / 2, (v.bytes_added, v.size)


# -- Lightning ---------------------------------------------------------------------------------


def _lightning_module():  # type: ignore[no-untyped-def]
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            # 8 MiB frozen: several content-defined chunks, so dedup shows in one .ckpt file.
            self.backbone = torch.nn.Linear(512, 4096)
            self.backbone.requires_grad_(False)
            self.head = torch.nn.Linear(4096, 4)

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.head(self.backbone(x).relu()), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.head.parameters(), lr=0.1)

    return Tiny


def _loader():  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 512, generator=g),
                                          torch.randint(0, 4, (64,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=8)


def _trainer(tmp_path: Path, max_steps: int, callbacks: list):  # type: ignore[no-untyped-def]
    import lightning.pytorch as pl

    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=callbacks)


def test_lightning_registers_each_checkpoint_and_resumes(keep: modelkeep.Keep,
                                                         tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from modelkeep.plugins.callbacks.lightning import ModelkeepCheckpoint, checkpoint_file

    torch.manual_seed(0)
    name = unique_name()
    Tiny = _lightning_module()
    callback = ModelkeepCheckpoint(name, keep=keep, dirpath=tmp_path / "ckpt",
                                   every_n_train_steps=1, save_last=True,
                                   tracker_options={"on_full": "block"})
    _trainer(tmp_path, 4, [callback]).fit(Tiny(), _loader())
    versions = keep.versions(name)
    _assert_chain(versions, [1, 2, 3, 4])
    assert all(float(v.tags["metric.train_loss"]) > 0 for v in versions)
    assert versions[-1].tags["epoch"] == "0"

    class StartStep(pl.Callback):
        def on_train_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            self.step = trainer.global_step

    folder = keep.pull(f"{name}@latest", tmp_path / "resume")
    started = StartStep()
    resumed = ModelkeepCheckpoint(name, keep=keep, dirpath=tmp_path / "ckpt2",
                                  every_n_train_steps=1,
                                  tracker_options={"on_full": "block", "parent": versions[-1].ref})
    trainer = _trainer(tmp_path, 6, [started, resumed])
    model = Tiny()
    trainer.fit(model, _loader(), ckpt_path=checkpoint_file(folder))
    assert started.step == 4 and trainer.global_step == 6
    after = keep.versions(name)
    assert [int(v.tags["step"]) for v in after[4:]] == [5, 6]
    assert [p.version for p in after[4].parents] == [versions[-1].version]


def test_lightning_failing_store_fails_fit(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    from modelkeep.plugins.callbacks.lightning import ModelkeepCheckpoint

    callback = ModelkeepCheckpoint(unique_name(), keep=_unreachable_s3(mlflow_sqlite_uri),
                                   dirpath=tmp_path / "ckpt", every_n_train_steps=1)
    with pytest.raises(CheckpointError, match="unreachable"):
        _trainer(tmp_path, 3, [callback]).fit(_lightning_module()(), _loader())


def test_lightning_retention_aliases_pass_the_alias_gate(
    tmp_path: Path, mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ``best`` alias the callback's retention moves is checked by the plugins like any
    alias: the example approval plugin, protecting ``best``, refuses it for unapproved
    checkpoints; the versions are still registered, and ``last`` moves (journaled, in the
    alias history)."""
    from modelkeep.plugins.callbacks.lightning import ModelkeepCheckpoint
    from modelkeep.training import VetoWarning

    monkeypatch.setenv("MODELKEEP_APPROVAL_ALIASES", "best")
    pm = make_plugin_manager(entry_points=False)
    pm.register(example_approval_plugin())
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri, plugins=pm)
    name = unique_name()
    torch.manual_seed(0)
    callback = ModelkeepCheckpoint(name, keep=keep, dirpath=tmp_path / "ckpt",
                                   every_n_train_steps=2, monitor="train_loss", save_top_k=-1,
                                   keep_last=2, tracker_options={"on_full": "block"})
    with pytest.warns(VetoWarning, match=r"alias 'best' was not moved .*approved-by"):
        _trainer(tmp_path, 6, [callback]).fit(_lightning_module()(), _loader())
    versions = keep.versions(name)
    assert [int(v.tags["step"]) for v in versions] == [2, 4, 6]
    assert all("best" not in v.aliases for v in versions)  # the gate held
    assert "last" in versions[-1].aliases
    moves = [(e.alias, e.version) for e in keep.alias_history(name)]
    assert moves == [("last", 1), ("last", 2), ("last", 3)]
    entries, _bad = keep.store.journal()
    entries = [e for e in entries if e.op != "commit"]  # the registers' commit records
    assert [(e.data["alias"], e.data["version"]) for e in entries] == moves


@pytest.mark.timeout(300)  # two processes that each import torch and Lightning
def test_lightning_ddp_registers_on_rank_zero_only(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    """Two CPU processes (strategy "ddp", gloo): one version per checkpoint, all registered by
    rank 0, and both ranks finish."""
    name = unique_name()
    store = str(tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("ddp_train.py")), name, store,
         mlflow_sqlite_uri, str(tmp_path / "ckpt")],
        env=env, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 finished at step 3; registry opened: True" in proc.stdout
    assert "rank 1 finished at step 3; registry opened: False" in proc.stdout  # never registered
    keep = modelkeep.open(store=store, registry=mlflow_sqlite_uri)
    versions = keep.versions(name)
    assert [int(v.tags["step"]) for v in versions] == [1, 2, 3]
    for prev, cur in itertools.pairwise(versions):
        assert [p.version for p in cur.parents] == [prev.version]
    assert {v.author for v in versions} == {"rank0@ddp"}
    assert len(set(keep.store.snapshot_ids())) == 3  # nothing stored twice by rank 1


# -- Keras -------------------------------------------------------------------------------------


def _keras_model():  # type: ignore[no-untyped-def]
    import keras

    keras.utils.set_random_seed(0)
    # 8 MiB frozen: several content-defined chunks, so dedup shows in one .keras/.h5 file.
    model = keras.Sequential([keras.Input((512,)),
                              keras.layers.Dense(4096, activation="relu", trainable=False),
                              keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _keras_data():  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.standard_normal((32, 512)).astype("float32"), rng.integers(0, 4, 32)


def test_keras_registers_each_save_and_resumes(keep: modelkeep.Keep, tmp_path: Path) -> None:
    import keras

    from modelkeep.plugins.callbacks.keras import ModelkeepCheckpoint

    assert keras.backend.backend() == "torch"
    name = unique_name()
    x, y = _keras_data()
    model = _keras_model()
    callback = ModelkeepCheckpoint(name, str(tmp_path / "ckpt" / "model.keras"), keep=keep,
                                   save_freq=2, monitor="loss",
                                   tracker_options={"on_full": "block"})
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[callback], verbose=0)
    versions = keep.versions(name)
    _assert_chain(versions, [2, 4, 6, 8])
    assert all(float(v.tags["metric.loss"]) > 0 for v in versions)
    assert [f.path for f in versions[-1].files] == ["model.keras"]

    folder = keep.pull(f"{name}@latest", tmp_path / "resume")
    restored = keras.saving.load_model(folder / "model.keras")
    expected = model.predict(x, verbose=0)
    assert restored.predict(x, verbose=0) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # The optimizer state came along: training goes on from where it stopped.
    assert int(restored.optimizer.iterations) == int(model.optimizer.iterations) == 8
    restored.fit(x, y, batch_size=8, epochs=3, initial_epoch=2, verbose=0)
    assert int(restored.optimizer.iterations) == 12


def test_keras_weights_only(keep: modelkeep.Keep, tmp_path: Path) -> None:
    from modelkeep.plugins.callbacks.keras import ModelkeepCheckpoint

    name = unique_name()
    x, y = _keras_data()
    model = _keras_model()
    callback = ModelkeepCheckpoint(name, str(tmp_path / "w" / "model.weights.h5"), keep=keep,
                                   save_weights_only=True, tracker_options={"on_full": "block"})
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[callback], verbose=0)
    versions = keep.versions(name)
    _assert_chain(versions, [4, 8])  # save_freq="epoch": after 4 and 8 batches
    assert [v.tags["epoch"] for v in versions] == ["1", "2"]
    folder = keep.pull(f"{name}@1", tmp_path / "pulled")
    fresh = _keras_model()
    fresh.load_weights(folder / "model.weights.h5")


# -- Transformers ------------------------------------------------------------------------------


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, vocab: int = 4000, length: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}


def _bert():  # type: ignore[no-untyped-def]
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=4000, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
    model = BertForSequenceClassification(config)
    model.bert.embeddings.requires_grad_(False)  # frozen, and most of the bytes
    return model


def _hf_trainer(tmp_path: Path, max_steps: int, callbacks: list):  # type: ignore[no-untyped-def]
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=max_steps, save_steps=2,
                             save_total_limit=1, per_device_train_batch_size=4, logging_steps=1,
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    return Trainer(model=_bert(), args=args, train_dataset=_Tokens(), callbacks=callbacks)


def test_transformers_registers_each_save_and_resumes(keep: modelkeep.Keep,
                                                      tmp_path: Path) -> None:
    from transformers import TrainerCallback

    from modelkeep.plugins.callbacks.transformers import ModelkeepCallback

    name = unique_name()
    callback = ModelkeepCallback(name, keep=keep, tracker_options={"on_full": "block"})
    _hf_trainer(tmp_path, 4, [callback]).train()
    versions = keep.versions(name)
    _assert_chain(versions, [2, 4])
    assert float(versions[-1].tags["metric.loss"]) > 0
    files = {f.path for f in versions[-1].files}
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= files

    class Steps(TrainerCallback):
        count = 0

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            Steps.count += 1

    folder = keep.pull(f"{name}@latest", tmp_path / "resume")
    resumed = _hf_trainer(tmp_path, 6, [Steps()])
    resumed.train(resume_from_checkpoint=str(folder))
    assert resumed.state.global_step == 6 and Steps.count == 2


def test_missing_framework_names_the_extra(tmp_path: Path) -> None:
    # A framework that is not installed: block its import and check the message names the extra.
    code = ("import sys; sys.modules['keras'] = None\n"
            "try:\n    import modelkeep.plugins.callbacks.keras\n"
            "except ImportError as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ}, check=True)
    assert out.stdout.strip() == ("MissingExtraError this needs the optional package 'keras' "
                                  "(pip install \"modelkeep[keras]\")")
