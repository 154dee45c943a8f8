"""Logging for workflow scripts: everything a stage prints, tracebacks included, goes to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def log_to_file(path: str | Path) -> logging.Logger:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Snakemake points at the log when a job fails, so uncaught tracebacks must land there too.
    # Appending keeps the log of a run that was killed and resumed (training) whole.
    sys.stderr = open(path, "a", buffering=1)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    return logging.getLogger("pianomuse")
