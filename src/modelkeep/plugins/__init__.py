"""Adapters to the outside tools (MLflow, and later DVC, git and frameworks).

Each adapter imports its tool lazily and reports a missing one as
:class:`~modelkeep.errors.MissingExtraError` naming the extra to install.
"""
