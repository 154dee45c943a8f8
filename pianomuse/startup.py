"""Start-up settings of workflow scripts, made before the imports they affect."""

from __future__ import annotations

import sys


def skip_torch_import() -> None:
    """Makes every later `import torch` in this process raise ImportError, so that a library that imports torch only
    for optional parts leaves those parts out.

    miditok imports torch, when it is installed, for data loaders that tokenizing does not use; that import would
    cost every tokenize job a second or two of start-up. Call this before the first import of miditok (or of a
    pianomuse module that imports it). A None entry in sys.modules is the import system's documented way of making
    an import fail.
    """
    if sys.modules.get("torch") is not None:
        raise RuntimeError("torch is imported already: call skip_torch_import() before importing miditok")
    sys.modules["torch"] = None
