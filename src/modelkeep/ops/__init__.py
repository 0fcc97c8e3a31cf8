"""The operations: one module per user-visible operation, and the only code that uses the
store and the catalogue together. :class:`~modelkeep.keep.Keep` forwards each public method to
one function here; the functions take that Keep (its store, registry, plugins and caches).

- :mod:`.register`: register and promote over one commit protocol (``_commit``)
- :mod:`.read`: get, list, pull, open one file, verify; :mod:`.diff`: what changed between two
- :mod:`.aliases`: aliases, rollback, alias history, descriptions, tags of a version
- :mod:`.summary`: the only writer of descriptions: the user's text and the generated summary
- :mod:`.usage`: where the bytes go (``du``), from snapshots and a chunk listing
- :mod:`.delete`, :mod:`.gc`, :mod:`.sync`: deleting, collecting, copying
- :mod:`.rebuild`: a registry rebuilt from the store, planned then executed
- :mod:`.scan`, :mod:`.signatures`, :mod:`.checkpoints`: scanning, signing, background registers
- :mod:`.journal`: the store journal entries the operations write; :mod:`.results`: the
  values returned
"""
