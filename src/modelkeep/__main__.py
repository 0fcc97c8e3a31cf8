"""``python -m modelkeep``."""

from __future__ import annotations

import sys

from modelkeep.cli.main import main

sys.exit(main())
