"""Framework callbacks: thin layers over :mod:`modelkeep.training`, one module per framework.

* :mod:`.lightning`: ``ModelkeepCheckpoint``, a PyTorch Lightning ``ModelCheckpoint`` that
  registers every checkpoint it writes (``pip install "modelkeep[lightning]"``).
* :mod:`.keras`: ``ModelkeepCheckpoint``, a Keras 3 ``ModelCheckpoint`` that registers every
  ``.keras`` / ``.weights.h5`` file it writes (``pip install "modelkeep[keras]"``).
* :mod:`.transformers`: ``ModelkeepCallback``, a Hugging Face ``TrainerCallback`` that registers
  each ``checkpoint-N`` folder on save (``pip install "modelkeep[transformers]"``).

Importing this package imports no framework; each module imports its own and raises
:class:`~modelkeep.errors.MissingExtraError` naming the extra when it is missing. The framework
decides when to save; the callback hands each saved checkpoint to a
:class:`~modelkeep.training.Tracker` (background upload, chain of parents, metric tags,
retention) and flushes it when training ends, so upload errors surface from ``fit``/``train``.
"""
