"""The ``modelkeep`` command line."""
