"""What the command modules share."""

from __future__ import annotations

import os
import sys


def progress_wanted(quiet: bool) -> bool:
    """Progress bars: on a terminal unless ``--quiet``, or wherever SMALLFIT_PROGRESS=1."""
    return (not quiet and sys.stderr.isatty()) or os.environ.get("SMALLFIT_PROGRESS") == "1"
