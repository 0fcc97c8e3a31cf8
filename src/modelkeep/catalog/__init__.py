"""The catalogue side of modelkeep: the one registry tag schema (:mod:`.tags`) and the summaries
written into descriptions for people reading the MLflow UI (:mod:`.summary`).

The :class:`~modelkeep.registry.Registry` protocol and the alias history
(:mod:`modelkeep.aliases`) are the rest of the catalogue; every version's registry tags, whether
written by register, promote or a registry rebuild, come from :func:`.tags.version_tags`.
"""
